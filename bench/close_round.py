"""Closing a round, step by step, at growing sizes: where the curator's closing time goes.

    .venv/bin/python bench/close_round.py [--sizes 4576 18304 36608] [--out bench/results/close_round.json]

Per size: a rich synthetic world with a seed pool 1.6 times the round (as ``bench/paper_scale.py``
builds it), one round's ledger folded from its events (30% of the samples failed, judged and
expanded twice), then each step the curator takes between a round's last result and its
``dataset.ready``, timed in this one process: reading the seed pool, Eq. 5, dropping repeated
ids, encoding the dataset, writing the trainer's file. The ledger stays alive throughout, so
the garbage collector walks a heap like a curator's. The seed pool is read two ways, side by
side: decoded whole (what the curator did before) and with :class:`~looptool.loop.curation.SeedPool`
(every line checked, only the drawn samples kept); both give the same dataset (asserted).
No bus and no object store: those steps are in ``bench/paper_scale.py``'s closing time.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import msgspec

from looptool.data.formats import encode_samples, export_jsonl
from looptool.data.samples import Sample
from looptool.data.worlds.synthetic import build
from looptool.kernel.events import ArtifactRef
from looptool.loop import curation
from looptool.loop.events import DatasetReady, ExpandResult, JudgeVerdict, ProbeResult
from looptool.loop.ledger import RunLedger
from looptool.loop.runconfig import PplCut, RunConfig


def folded_round(samples: list[Sample], rng: random.Random) -> RunLedger:
    ledger = RunLedger("bench", release_closed_rounds=True)
    ref = ArtifactRef(bucket="b", name="bench/0.jsonl")
    ledger.apply(DatasetReady(run="bench", round=0, dataset=ref, size=len(samples), composition={}))
    for s in samples:
        failed = rng.random() < 0.3
        outcome = "failed" if failed else "mastered"
        ledger.apply(ProbeResult(run="bench", sample_id=s.id, outcome=outcome, ppl=rng.random(), sample=s))
        if failed:
            ledger.apply(JudgeVerdict(run="bench", sample_id=s.id, verdict="prediction_wrong", action="hard", sample=s))
            twins = [msgspec.structs.replace(s, id=f"{s.id}-x{k}") for k in (1, 2)]
            ledger.apply(ExpandResult(run="bench", seed_id=s.id, samples=twins))
    return ledger


def measure(size: int, out_dir: Path) -> dict[str, object]:
    world = build(int(size * 1.6), 0, seed=1, noise_rate=0.1, catalogue="rich")
    seed_data = encode_samples(world.train)
    config = RunConfig(run="bench", initial_size=size, round_size=size, ppl_cut=PplCut("percentile", 50))
    ledger = folded_round(world.train[:size], random.Random(0))
    del world
    current = ledger.round(0)
    steps: dict[str, float] = {}

    def timed(name: str, fn):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        result = fn()
        steps[name] = round(time.perf_counter() - start, 3)
        return result

    decoder = msgspec.json.Decoder(Sample)
    whole = timed(
        "seed pool decoded whole (before)",
        lambda: curation.shuffled_pool([decoder.decode(line) for line in seed_data.splitlines()], config.seed),
    )
    before = timed("Eq. 5 (whole pool)", lambda: curation.next_round(current, config, whole, size))
    whole.clear()  # freed before the other way runs
    pool = timed("seed pool checked, drawn samples kept (SeedPool)", lambda: curation.SeedPool(seed_data, config.seed))
    dataset = timed("Eq. 5 (SeedPool)", lambda: curation.next_round(current, config, pool, size))
    assert dataset.samples == before.samples  # the same dataset either way
    samples, _ = timed("repeated ids dropped", lambda: curation.unique(dataset.samples))
    data = timed("dataset encoded", lambda: encode_samples(samples))
    timed("trainer's file written", lambda: export_jsonl(samples, out_dir / f"train-{size}.jsonl", "openai"))
    return {
        "round_size": size,
        "seed_pool": len(pool),
        "seed_pool_mb": round(len(seed_data) / 1e6, 1),
        "dataset": len(samples),
        "dataset_mb": round(len(data) / 1e6, 1),
        "heap_objects": len(gc.get_objects()),
        "steps_s": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4576, 18304, 36608])
    parser.add_argument("--out", help="also write the results (and this command) to a JSON file")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as out_dir:
        for size in args.sizes:
            result = measure(size, Path(out_dir))
            print(msgspec.json.encode(result).decode(), flush=True)
            results.append(result)
    if args.out:
        command = f"python bench/close_round.py --sizes {' '.join(map(str, args.sizes))} --out {args.out}"
        record = {"command": command, "machine": f"{platform.machine()}, {os.cpu_count()} cores", "results": results}
        Path(args.out).write_bytes(msgspec.json.format(msgspec.json.encode(record)) + b"\n")


if __name__ == "__main__":
    main()
