"""The domain and event types: the one source of truth for what travels on the bus.

Every event is a tagged msgspec Struct; the tag doubles as the event's subject suffix
(see :mod:`looptool.subjects`). Evolution rules: new fields get defaults, fields are never
reordered or retyped, tags never change.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, TypeAlias, Union

import msgspec

# --------------------------------------------------------------------------- domain


class FunctionSpec(msgspec.Struct, omit_defaults=True):
    """An OpenAI function definition; ``parameters`` is a JSON Schema object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolSpec(msgspec.Struct, omit_defaults=True):
    function: FunctionSpec
    type: Literal["function"] = "function"


class ToolCall(msgspec.Struct, omit_defaults=True):
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


Role: TypeAlias = Literal["system", "user", "assistant", "tool"]


class Message(msgspec.Struct, omit_defaults=True):
    role: Role
    content: str | None = None
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    name: str | None = None
    tool_call_id: str | None = None


class Lineage(msgspec.Struct, omit_defaults=True):
    """Where a sample came from and what changed it; travels with the sample forever."""

    origin: str = "seed"  # seed | expansion | correction
    round: int = 0
    parent: str | None = None  # the seed sample of an expansion or correction
    source: str | None = None  # file, generator, or verdict that produced it
    history: list[str] = msgspec.field(default_factory=list)


class Sample(msgspec.Struct, omit_defaults=True):
    """One training/probing item: tools + conversation so far + the expected calls.

    ``label`` is the expected list of calls; an empty list means "no call expected"
    (irrelevance). ``id`` is content-derived (see :func:`sample_id`) so that re-importing
    the same data gives the same ids.
    """

    id: str
    tools: list[ToolSpec]
    messages: list[Message]
    label: list[ToolCall] = msgspec.field(default_factory=list)
    category: str = "simple"
    meta: dict[str, Any] = msgspec.field(default_factory=dict)
    lineage: Lineage = msgspec.field(default_factory=Lineage)


_canonical = msgspec.json.Encoder(order="sorted")


def sample_id(tools: list[ToolSpec], messages: list[Message], label: list[ToolCall]) -> str:
    """A stable id derived from a sample's content (order-sensitive, key-order-insensitive)."""
    digest = hashlib.blake2b(_canonical.encode([tools, messages, label]), digest_size=10)
    return "s-" + digest.hexdigest()


class ArtifactRef(msgspec.Struct, omit_defaults=True):
    """A pointer to a large payload in the object store (bucket + name) and its checksum."""

    bucket: str
    name: str
    size: int = 0
    sha256: str = ""


# --------------------------------------------------------------------------- events


class Event(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    """Base of every bus event. ``run`` namespaces the subject; ``round`` the loop iteration."""

    run: str
    round: int = 0

    # A deduplication key: publishing the same logical event twice yields one stored
    # message (JetStream's Nats-Msg-Id window). Subclasses make it unique per work item.
    def dedup_key(self) -> str:
        return f"{self.run}:{self.round}:{type(self).__struct_config__.tag}"


class RunRequested(Event, tag="run.requested"):
    config: dict[str, Any] = msgspec.field(default_factory=dict)


class DatasetReady(Event, tag="dataset.ready"):
    dataset: ArtifactRef
    size: int
    composition: dict[str, int] = msgspec.field(default_factory=dict)


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


Verdict: TypeAlias = Literal["prediction_wrong", "label_wrong", "both_right", "both_wrong", "unclear"]
Action: TypeAlias = Literal["label_ok", "label_fixed", "discard"]


class JudgeVerdict(Event, tag="judge.verdict"):
    sample_id: str
    verdict: Verdict
    action: Action
    analysis: str = ""
    approach: str = ""
    corrected_label: list[ToolCall] | None = None
    tier: Literal["rules", "llm", "match"] = "rules"
    votes: list[Verdict | None] = msgspec.field(default_factory=list)  # None: a reply that did not parse
    llm_calls: int = 0
    invalid_replies: list[str] = msgspec.field(default_factory=list)  # raw, for audit
    sample: Sample | None = None  # the sample as it goes on (label replaced when fixed)
    prediction: list[ToolCall] = msgspec.field(default_factory=list)  # the policy's calls, for the expander

    def dedup_key(self) -> str:
        return f"{super().dedup_key()}:{self.sample_id}"


class ExpandResult(Event, tag="expand.result"):
    seed_id: str
    samples: list[Sample] = msgspec.field(default_factory=list)
    rejected: dict[str, int] = msgspec.field(default_factory=dict)

    def dedup_key(self) -> str:
        return f"{super().dedup_key()}:{self.seed_id}"


class TrainProgress(Event, tag="train.progress"):
    step: int
    total_steps: int
    loss: float
    epoch: float = 0.0
    learning_rate: float = 0.0

    def dedup_key(self) -> str:
        return f"{super().dedup_key()}:{self.step}"


class EvalCompleted(Event, tag="eval.completed"):
    model: str
    metrics: dict[str, float]
    n_items: int
    details: ArtifactRef | None = None
    eval_set: str = ""

    def dedup_key(self) -> str:
        return f"{super().dedup_key()}:{self.model}"


class RunFinished(Event, tag="run.finished"):
    reason: str


class ServiceHeartbeat(Event, tag="service.heartbeat"):
    service: str
    replica: str
    in_flight: int = 0
    handled: int = 0
    failed: int = 0

    def dedup_key(self) -> str:  # heartbeats are never deduplicated
        return ""


class ServiceError(Event, tag="service.error"):
    service: str
    replica: str
    error: str
    subject: str = ""
    sample_id: str | None = None

    def dedup_key(self) -> str:
        return ""


class DeadLetter(Event, tag="dlq.letter"):
    """A message that a service gave up on, with everything needed to replay it."""

    service: str
    subject: str  # where the original was published
    stream_seq: int
    num_delivered: int
    error: str
    data: bytes  # the original payload, verbatim
    msg_id: str = ""

    def dedup_key(self) -> str:
        return f"{self.run}:dlq:{self.service}:{self.stream_seq}"


AnyEvent: TypeAlias = Union[
    RunRequested,
    DatasetReady,
    ModelReady,
    ProbeTask,
    ProbeResult,
    JudgeVerdict,
    ExpandResult,
    TrainProgress,
    EvalCompleted,
    RunFinished,
    ServiceHeartbeat,
    ServiceError,
    DeadLetter,
]

EVENT_TYPES: tuple[type[Event], ...] = AnyEvent.__args__  # type: ignore[attr-defined]


def event_tag(event_type: type[Event]) -> str:
    return event_type.__struct_config__.tag  # type: ignore[return-value]


# One encoder/decoder per type, reused (msgspec's advice for speed).
_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> AnyEvent:
    """Decode any event; raises :class:`msgspec.ValidationError` / ``DecodeError`` on garbage."""
    return _decoder.decode(data)


# The public contract: one JSON Schema file per root, for services in other languages.
SCHEMA_ROOTS: dict[str, Any] = {
    "sample": Sample,
    "event": AnyEvent,
}
