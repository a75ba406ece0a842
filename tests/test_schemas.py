from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import pytest

from looptool.app import schema_files
from looptool.data.samples import FunctionSpec, Lineage, Message, Sample, ToolCall, ToolSpec, sample_id
from looptool.kernel import names
from looptool.kernel.bus import Bus
from looptool.kernel.events import (
    ArtifactRef,
    DeadLetter,
    Event,
    ServiceError,
    ServiceHeartbeat,
    decode_event,
    encode_event,
    event_tag,
)
from looptool.loop.events import (
    EVENT_TYPES,
    DatasetReady,
    EvalCompleted,
    EvalShard,
    ExpandResult,
    JudgeVerdict,
    ModelReady,
    ProbeResult,
    ProbeTask,
    RoundStalled,
    RunFinished,
    RunRequested,
    SynthesisAttempt,
    SynthesisFinished,
    SynthesisJob,
    SynthesisRequested,
    SynthesisResult,
    SynthesisTask,
    TrainProgress,
)
from looptool.loop.runconfig import PplCut, RunConfig

REPO = Path(__file__).resolve().parents[1]


def weather_sample() -> Sample:
    tools = [
        ToolSpec(
            function=FunctionSpec(
                name="get_weather",
                description="Current weather",
                parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            )
        )
    ]
    messages = [Message(role="user", content="Weather in Oslo? ünïcødé ✓")]
    label = [ToolCall(name="get_weather", arguments={"city": "Oslo"})]
    return Sample(
        id=sample_id(tools, messages, label),
        tools=tools,
        messages=messages,
        label=label,
        meta={"noise": None, "n": 3},
        lineage=Lineage(origin="expansion", round=2, parent="s-1", history=["expanded"]),
    )


def one_of_each(run: str) -> list[Event]:
    sample = weather_sample()
    ref = ArtifactRef(bucket="b", name="n", size=3, sha256="ab")
    call = ToolCall(name="get_weather", arguments={"city": "Oslo", "days": [1, 2.5], "opts": {"a": None}})
    job = SynthesisJob(source="mcp:weather", tools=ref, count=8, seed=1, execute="mcp:weather")
    events: list[Event] = [
        RunRequested(run=run, config=RunConfig(run=run, rounds=3, ppl_cut=PplCut("threshold", 2.5))),
        DatasetReady(run=run, round=1, dataset=ref, size=10, composition={"hard": 3}),
        ModelReady(run=run, round=1, model="m-r1", adapter=ref, base_model="tiny"),
        ProbeTask(run=run, round=1, sample=sample, model="m-r1"),
        ProbeResult(
            run=run,
            round=1,
            sample_id=sample.id,
            outcome="failed",
            ppl=3.5,
            prediction=[call],
            error_type="parse",
            error="x",
        ),
        JudgeVerdict(
            run=run,
            round=1,
            sample_id=sample.id,
            verdict="label_wrong",
            action="label_fixed",
            corrected_label=[call],
            votes=["label_wrong"],
        ),
        ExpandResult(run=run, round=1, seed_id=sample.id, samples=[sample], rejected={"duplicate": 2}),
        TrainProgress(run=run, round=1, step=5, total_steps=25, loss=6.5, epoch=0.2, learning_rate=1e-3),
        EvalShard(run=run, round=1, model="m-r1", shard=2, shards=4, contaminated=1, contaminated_ids=["s-1"]),
        EvalCompleted(run=run, round=1, model="m-r1", metrics={"overall": 0.5}, n_items=20, details=ref),
        RunFinished(run=run, round=3, reason="max rounds"),
        RoundStalled(
            run=run, round=1, waiting={"judge": 2}, samples={"judge": ["s-1", "s-2"]}, idle_seconds=600.0, progress=41
        ),
        SynthesisRequested(run=run, job=job),
        SynthesisTask(run=run, job=job, attempt=3),
        SynthesisResult(
            run=run,
            count=8,
            outcome=SynthesisAttempt(attempt=3, category="simple", stage="format", reason="x", calls=[call]),
        ),
        SynthesisFinished(run=run, pool=ref, rejects=ref, kept=5, attempted=8, rejected={"format: x": 3}),
        ServiceHeartbeat(run=run, service="probe", replica="a", in_flight=2),
        ServiceError(run=run, service="probe", replica="a", error="boom", sample_id="s-1"),
        DeadLetter(
            run=run,
            service="probe",
            subject="looptool.x.probe.task",
            stream_seq=7,
            num_delivered=3,
            error="e",
            data=b"\x00\xffraw",
            stage="probe.task",
            sample_id="s-1",
        ),
    ]
    return events


def test_examples_cover_every_event_type() -> None:
    assert {type(e) for e in one_of_each("r")} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", one_of_each("r"), ids=lambda e: event_tag(type(e)))
def test_codec_round_trip(event: Event) -> None:
    assert decode_event(encode_event(event)) == event


def test_every_event_type_round_trips_through_jetstream(settings, run_id: str) -> None:
    events = one_of_each(run_id)

    async def main() -> list[object]:
        bus = await Bus.connect(settings.nats)
        try:
            for event in events:
                await bus.publish(event)
            return [item async for _, item in bus.read(names.run_filter(run_id))]
        finally:
            await bus.close()

    assert anyio.run(main) == events


def test_decoding_garbage_raises_a_validation_error() -> None:
    with pytest.raises(msgspec.ValidationError, match="type"):
        decode_event(b'{"type": "no.such.event", "run": "r"}')
    with pytest.raises(msgspec.ValidationError, match=r"\$\.outcome"):
        decode_event(b'{"type": "probe.result", "run": "r", "sample_id": "s", "outcome": "meh", "ppl": 1}')


def test_sample_ids_are_content_derived_and_stable() -> None:
    sample = weather_sample()
    reordered_args = [ToolCall(name="f", arguments={"b": 2, "a": 1})]
    assert sample_id(sample.tools, sample.messages, sample.label) == sample.id
    assert sample_id([], [], reordered_args) == sample_id([], [], [ToolCall(name="f", arguments={"a": 1, "b": 2})])
    other = [Message(role="user", content="Weather in Bergen?")]
    assert sample_id(sample.tools, other, sample.label) != sample.id
    # Pinned: ids must survive library upgrades, or re-imports would not match old runs.
    assert sample_id([], [Message(role="user", content="hi")], []) == "s-daff79dc0c62e06e1611"


def test_checked_in_json_schemas_are_current() -> None:
    assert schema_files.stale(REPO / "schemas") == [], "run `looptool schemas` and commit the result"


def test_stale_schema_files_are_detected(tmp_path: Path) -> None:
    schema_files.write(tmp_path)
    assert schema_files.stale(tmp_path) == []
    (tmp_path / "event.schema.json").write_text("{}")
    assert schema_files.stale(tmp_path) == ["event.schema.json"]


def test_subject_tokens_reject_wildcards_and_paths() -> None:
    with pytest.raises(names.InvalidName):
        names.for_event(RunFinished(run="a.b", reason="x"))
    with pytest.raises(names.InvalidName):
        names.check_token("adapter", "../etc")
    assert names.for_event(RunFinished(run="a-b_1", reason="x")) == "looptool.a-b_1.run.finished"
