"""The loop's events: what the services of the LoopTool method say to each other.

Every event is a tagged msgspec Struct (see :mod:`looptool.kernel.events`); the tag is also the
event's subject suffix. Evolution rules: new fields get defaults, fields are never reordered or
retyped, tags never change.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias, Union

import msgspec

from looptool.data.samples import Sample, ToolCall
from looptool.kernel.events import ArtifactRef, DeadLetter, Event, ServiceError, ServiceHeartbeat, register
from looptool.loop.runconfig import RunConfig


class RunRequested(Event, tag="run.requested"):
    config: RunConfig


class DatasetReady(Event, tag="dataset.ready"):
    dataset: ArtifactRef
    size: int
    composition: dict[str, int] = msgspec.field(default_factory=dict)
    # Every sample id in the dataset: the round's ledger admits work on these and no others.
    sample_ids: list[str] = msgspec.field(default_factory=list)


class ModelReady(Event, tag="model.ready"):
    model: str  # the name the serving endpoint answers to
    adapter: ArtifactRef | None = None
    base_model: str = ""
    dataset: ArtifactRef | None = None  # the round's dataset, which the probe fans out
    train_tokens: int = 0  # tokens trained on this round (0 when training was skipped)
    train_seconds: float = 0.0


class ProbeTask(Event, tag="probe.task"):
    sample: Sample
    model: str

    def dedup_key(self) -> str:
        return f"{super().dedup_key()}:{self.sample.id}"

    def work_item(self) -> str | None:
        return self.sample.id


Outcome: TypeAlias = Literal["mastered", "failed"]


class ProbeResult(Event, tag="probe.result"):
    sample_id: str
    outcome: Outcome
    ppl: float | None  # None when no token was scored
    prediction: list[ToolCall] = msgspec.field(default_factory=list)
    raw: str = ""
    error_type: str | None = None
    error: str | None = None
    reasoning: str | None = None
    sample: Sample | None = None  # the probed sample, so that the judge needs no dataset lookup

    def dedup_key(self) -> str:
        return f"{super().dedup_key()}:{self.sample_id}"

    def work_item(self) -> str | None:
        return self.sample_id


Verdict: TypeAlias = Literal["prediction_wrong", "label_wrong", "both_right", "both_wrong", "unclear"]
Action: TypeAlias = Literal["label_ok", "label_fixed", "discard"]
Tier: TypeAlias = Literal["rules", "llm", "match"]

# The verified failures that seed an expansion (EDDE): the one definition the expander acts on
# and the ledger waits for — were they ever to differ, rounds would never close.
SEED_VERDICTS: frozenset[Verdict] = frozenset({"prediction_wrong", "label_wrong", "both_wrong"})


def seeds_expansion(verdict: Verdict) -> bool:
    return verdict in SEED_VERDICTS


class JudgeVerdict(Event, tag="judge.verdict"):
    sample_id: str
    verdict: Verdict
    action: Action
    analysis: str = ""
    approach: str = ""
    corrected_label: list[ToolCall] | None = None
    tier: Tier = "rules"
    votes: list[Verdict | None] = msgspec.field(default_factory=list)  # None: a reply that did not parse
    llm_calls: int = 0
    invalid_replies: list[str] = msgspec.field(default_factory=list)  # raw, for audit
    sample: Sample | None = None  # the sample as it goes on (label replaced when fixed)
    prediction: list[ToolCall] = msgspec.field(default_factory=list)  # the policy's calls, for the expander

    def dedup_key(self) -> str:
        return f"{super().dedup_key()}:{self.sample_id}"

    def work_item(self) -> str | None:
        return self.sample_id


class ExpandResult(Event, tag="expand.result"):
    seed_id: str
    samples: list[Sample] = msgspec.field(default_factory=list)
    rejected: dict[str, int] = msgspec.field(default_factory=dict)

    def dedup_key(self) -> str:
        return f"{super().dedup_key()}:{self.seed_id}"

    def work_item(self) -> str | None:
        return self.seed_id


class TrainProgress(Event, tag="train.progress"):
    step: int
    total_steps: int
    loss: float
    epoch: float = 0.0
    learning_rate: float = 0.0
    reward: float | None = None  # GRPO: the mean reward of the step's completions

    def dedup_key(self) -> str:
        return f"{super().dedup_key()}:{self.step}"


class EvalShard(Event, tag="eval.shard"):
    """One part of a round's evaluation (items ``shard``, ``shard + shards``, ...), for whichever
    evaluator replica takes it; the one that scores the last part publishes ``eval.completed``."""

    model: str
    shard: int
    shards: int
    # Decontamination (round 0), carried to whoever publishes the result.
    contaminated: int = 0
    contaminated_ids: list[str] = msgspec.field(default_factory=list)

    def dedup_key(self) -> str:
        return f"{super().dedup_key()}:{self.model}:{self.shard}"


class EvalCompleted(Event, tag="eval.completed"):
    model: str
    metrics: dict[str, float]
    n_items: int
    details: ArtifactRef | None = None
    eval_set: str = ""
    # Decontamination (round 0): training samples whose request or tools overlap the eval items.
    contaminated: int = 0
    contaminated_ids: list[str] = msgspec.field(default_factory=list)  # the first 50

    def dedup_key(self) -> str:
        return f"{super().dedup_key()}:{self.model}"


class RunFinished(Event, tag="run.finished"):
    reason: str


class RoundStalled(Event, tag="round.stalled"):
    """A round made no progress for ``idle_seconds``: what it waits for, per stage."""

    waiting: dict[str, int]  # stage -> samples still missing there
    samples: dict[str, list[str]] = msgspec.field(default_factory=dict)  # stage -> some of their ids
    idle_seconds: float = 0.0
    progress: int = 0  # events the round had applied when it stalled

    def dedup_key(self) -> str:  # one report per stall, not per curator replica
        return f"{super().dedup_key()}:{self.progress}"


class SynthesisJob(msgspec.Struct, kw_only=True):
    """What a synthesis job makes samples from: its tools (resolved by whoever asked, so that a
    bad spec is refused there, naming the place) and where their calls may run."""

    source: str  # the tool source as the user named it: every sample's lineage
    tools: ArtifactRef  # JSONL of ToolSpec
    count: int  # attempts
    seed: int
    # Where calls run: "mcp:<command or URL>" or "openapi:<base URL>" ("": nowhere). The
    # synthesizer starts or calls only what its own settings allow (synthesis.allow_execution).
    execute: str = ""
    operations: ArtifactRef | None = None  # an OpenAPI source's operations, to call the API


class SynthesisRequested(Event, tag="synthesis.requested"):
    """Seed data from tools: ``job.count`` attempts, shared by the synthesizer's replicas. The
    event's run is the job's name."""

    job: SynthesisJob


class SynthesisTask(Event, tag="synthesis.task"):
    job: SynthesisJob
    attempt: int

    def dedup_key(self) -> str:
        return f"{super().dedup_key()}:{self.attempt}"

    def work_item(self) -> str | None:
        return f"attempt-{self.attempt}"


class SynthesisAttempt(msgspec.Struct, kw_only=True):
    """One attempt before de-duplication: the sample that passed format, execution and
    semantics, or the stage and reason that rejected it (with what the generator wrote)."""

    attempt: int
    category: str
    sample: Sample | None = None
    stage: str = ""
    reason: str = ""
    request: str = ""
    calls: list[ToolCall] = msgspec.field(default_factory=list)


class SynthesisResult(Event, tag="synthesis.result"):
    """Exactly one per attempt of a job (an attempt whose work failed for good is one too:
    stage ``error``)."""

    count: int  # the job's attempts, so that a reader knows when it has them all
    outcome: SynthesisAttempt

    def dedup_key(self) -> str:
        return f"{super().dedup_key()}:{self.outcome.attempt}"

    def work_item(self) -> str | None:
        return f"attempt-{self.outcome.attempt}"


class SynthesisFinished(Event, tag="synthesis.finished"):
    """A job settled: the seed pool (LoopTool samples, JSONL; what ``looptool run`` takes) and
    every rejected attempt, counted by ``stage: reason``."""

    pool: ArtifactRef
    rejects: ArtifactRef
    kept: int
    attempted: int
    rejected: dict[str, int] = msgspec.field(default_factory=dict)


AnyEvent: TypeAlias = Union[  # noqa: UP007
    RunRequested,
    DatasetReady,
    ModelReady,
    ProbeTask,
    ProbeResult,
    JudgeVerdict,
    ExpandResult,
    TrainProgress,
    EvalShard,
    EvalCompleted,
    RunFinished,
    RoundStalled,
    SynthesisRequested,
    SynthesisTask,
    SynthesisResult,
    SynthesisFinished,
    ServiceHeartbeat,
    ServiceError,
    DeadLetter,
]

EVENT_TYPES: tuple[type[Event], ...] = AnyEvent.__args__  # type: ignore[attr-defined]
register(*EVENT_TYPES)

# The public contract: one JSON Schema file per root, for services in other languages.
SCHEMA_ROOTS: dict[str, Any] = {
    "sample": Sample,
    "event": AnyEvent,
}
