"""The event base type, the kernel's own events, and the codec every event travels through.

An event is a tagged msgspec Struct; the tag doubles as the event's subject suffix (see
:mod:`looptool.kernel.names`). The kernel knows only its own events (dead letters, errors,
heartbeats); a domain registers its event types with :func:`register`, which opens the codec to
them. Evolution rules: new fields get defaults, fields are never reordered or retyped, tags never
change.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Union

import msgspec


class ArtifactRef(msgspec.Struct, omit_defaults=True):
    """A pointer to a large payload in the object store (bucket + name) and its checksum."""

    bucket: str
    name: str
    size: int = 0
    sha256: str = ""


class Event(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    """Base of every bus event. ``run`` namespaces the subject; ``round`` the loop iteration."""

    run: str
    round: int = 0
    # The field naming the service that files this event, for reports about a service's own
    # work: they are published under that name (see :func:`looptool.kernel.names.for_event`),
    # which only that service's identity may use, so no one can file one in another's name.
    sender_field: ClassVar[str | None] = None

    # A deduplication key: publishing the same logical event twice yields one stored
    # message (JetStream's Nats-Msg-Id window). Subclasses make it unique per work item.
    def dedup_key(self) -> str:
        return f"{self.run}:{self.round}:{event_tag(type(self))}"

    def work_item(self) -> str | None:
        """The sample (or seed) this event is about, for log context and error reports."""
        return None


class ServiceHeartbeat(Event, tag="service.heartbeat"):
    service: str
    replica: str
    in_flight: int = 0
    handled: int = 0
    failed: int = 0

    def dedup_key(self) -> str:  # heartbeats are never deduplicated
        return ""


class ServiceError(Event, tag="service.error"):
    sender_field = "service"
    service: str
    replica: str
    error: str
    subject: str = ""
    sample_id: str | None = None

    def dedup_key(self) -> str:
        return ""


class DeadLetter(Event, tag="dlq.letter"):
    """A message that a service gave up on, with everything needed to replay it."""

    sender_field = "service"

    service: str
    subject: str  # where the original was published
    stream_seq: int
    num_delivered: int
    error: str
    data: bytes  # the original payload, verbatim
    msg_id: str = ""
    stage: str = ""  # the event type the service was handling ("" when it did not decode)
    sample_id: str | None = None  # the work item, when the message decoded far enough to tell

    def dedup_key(self) -> str:
        return f"{self.run}:dlq:{self.service}:{self.stream_seq}"


KERNEL_EVENTS: tuple[type[Event], ...] = (ServiceHeartbeat, ServiceError, DeadLetter)


def event_tag(event_type: type[Event]) -> str:
    tag = event_type.__struct_config__.tag
    assert isinstance(tag, str), f"{event_type.__name__} has no tag"
    return tag


class EventCodec:
    """Encodes any event and decodes the registered ones (one msgspec decoder for the union)."""

    def __init__(self) -> None:
        self._types: dict[str, type[Event]] = {}
        self._encoder = msgspec.json.Encoder()
        self._decoder: msgspec.json.Decoder[Any] | None = None
        self.register(*KERNEL_EVENTS)

    def register(self, *event_types: type[Event]) -> None:
        for event_type in event_types:
            tag = event_tag(event_type)
            known = self._types.get(tag)
            if known is not None and known is not event_type:
                raise ValueError(f"event tag {tag!r} is taken by {known.__name__}")
            self._types[tag] = event_type
        self._decoder = None

    @property
    def types(self) -> tuple[type[Event], ...]:
        return tuple(self._types.values())

    def encode(self, event: Event) -> bytes:
        return self._encoder.encode(event)

    def decode(self, data: bytes) -> Event:
        """Decode a registered event; raises msgspec's ``DecodeError`` / ``ValidationError``
        (both :class:`msgspec.MsgspecError`) on garbage, an unknown tag included."""
        if self._decoder is None:
            self._decoder = msgspec.json.Decoder(Union[tuple(self._types.values())])  # noqa: UP007
        event: Event = self._decoder.decode(data)
        return event


codec = EventCodec()
register = codec.register
encode_event = codec.encode
decode_event = codec.decode


# JSON nested deeper than this is refused before msgspec sees it: msgspec's own limit is far
# higher, and a domain decoder that recurses (a schema walker, an AST) must never meet it.
MAX_JSON_DEPTH = 64
_BRACKETS = re.compile(rb'[\[\]{}"\\]')


def json_depth_exceeds(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON text nests arrays/objects deeper than ``limit`` (strings skipped); linear."""
    if data.count(b"[") + data.count(b"{") <= limit:  # most events: no scan needed
        return False
    depth = 0
    in_string = False
    escaped = False
    for match in _BRACKETS.finditer(data):
        char = match.group()
        if in_string:
            if escaped:
                escaped = False
            elif char == b"\\":
                escaped = match.end() < len(data)  # the next char is escaped, bracket or not
                if escaped and _BRACKETS.match(data, match.end()) is None:
                    escaped = False
            elif char == b'"':
                in_string = False
            continue
        if char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif char in (b"]", b"}"):
            depth -= 1
    return False
