"""The kernel's names: the only place that spells subjects, the stream, the buckets, consumers,
the runtime's own keys (done markers, claim checks) — and the only place that parses a subject.
The method's keys, artifact names and paths live in the loop layer (:mod:`looptool.loop.keys`).

Subjects are ``looptool.<run>.<stage>.<event>``, where ``<stage>.<event>`` is the event's tag;
an event filed about a service's own work (an error report, a dead letter) adds the sender:
``looptool.<run>.<stage>.<event>.<service>``.
"""

from __future__ import annotations

import re

from looptool.kernel.errors import LoopToolError
from looptool.kernel.events import Event, event_tag

PREFIX = "looptool"
STREAM = "LOOPTOOL"
STREAM_SUBJECTS = f"{PREFIX}.>"
ARTIFACT_BUCKET = "looptool-artifacts"
STATE_BUCKET = "looptool-state"
# Core NATS, outside the stream's subjects, so that liveness never fills the event log.
HEARTBEAT_SUBJECT = f"{PREFIX}-live.heartbeat"
SYSTEM_RUN = "_system"  # the run name of events that belong to no run (heartbeats)

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A header value or KV key part: printable ASCII without spaces, so no CR/LF can split a header.
_HEADER_VALUE = re.compile(r"[!-~]{0,1024}")


class InvalidName(LoopToolError, ValueError):
    pass


def check_token(kind: str, value: str) -> str:
    """Run, service and adapter names become subject tokens: no dots, wildcards or paths."""
    if not isinstance(value, str) or _TOKEN.fullmatch(value) is None:
        raise InvalidName(f"{kind} name {value!r} must match {_TOKEN.pattern}")
    return value


def check_header_value(kind: str, value: str) -> str:
    if _HEADER_VALUE.fullmatch(value) is None:
        raise InvalidName(f"{kind} {value[:80]!r} is not a valid header value (printable ASCII, no spaces)")
    return value


# --------------------------------------------------------------------------- subjects


def for_event(event: Event) -> str:
    subject = f"{PREFIX}.{check_token('run', event.run)}.{event_tag(type(event))}"
    if event.sender_field is None:
        return subject
    return f"{subject}.{check_token('service', getattr(event, event.sender_field))}"


def for_type(event_type: type[Event], run: str = "*", sender: str = "*") -> str:
    """The subject filter for one event type, in one run or (default) in every run — and for
    sender-bound types, from one sender or (default) from any."""
    if run != "*":
        check_token("run", run)
    subject = f"{PREFIX}.{run}.{event_tag(event_type)}"
    if event_type.sender_field is None:
        return subject
    return f"{subject}.{sender if sender == '*' else check_token('service', sender)}"


def run_filter(run: str) -> str:
    return f"{PREFIX}.{check_token('run', run)}.>"


def parse_subject(subject: str) -> tuple[str, str] | None:
    """``(run, tag)`` of a LoopTool event subject, or None for any other subject."""
    parts = subject.split(".")
    if len(parts) < 4 or parts[0] != PREFIX or _TOKEN.fullmatch(parts[1]) is None:
        return None
    return parts[1], ".".join(parts[2:])


def misfiled(subject: str, event: Event) -> str | None:
    """Why ``event``, read from ``subject``, must not be believed (None: it may). An event
    belongs on exactly the subject its run, type and sender make — so a publisher's permission
    on the subject vouches for the event — and its work item must be fit for a header (it
    ends up in message ids downstream). The services and every reader of the log ask this."""
    try:
        expected = for_event(event)
    except InvalidName:  # a run or sender that makes no subject token: none is its own
        expected = None
    if subject != expected:
        sender = None if event.sender_field is None else getattr(event, event.sender_field)
        what = f"a {event_tag(type(event))} event of run {event.run[:80]!r}"
        return what + ("" if sender is None else f" from {sender[:80]!r}") + f" published on {subject[:200]!r}"
    item = event.work_item()
    if item is not None:
        try:
            check_header_value("sample id", item)
        except InvalidName as exc:
            return str(exc)
    return None


def run_of(subject: str) -> str:
    parsed = parse_subject(subject)
    return parsed[0] if parsed else SYSTEM_RUN


def safe_token(value: str) -> str:
    """A free-form name (a model path, a hub id) made into a token, for keys and file names."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", value)[:64] or "_"


def consumer_name(service: str, event_type: type[Event]) -> str:
    """One durable consumer per (service, event type): every replica binds to it."""
    return f"{check_token('service', service)}__{event_tag(event_type).replace('.', '_')}"


# --------------------------------------------------------------------------- KV keys (state bucket)


def done_key(consumer: str, stream_seq: int) -> str:
    """Set once a ``once`` handler finished the message stored at ``stream_seq``."""
    return f"done.{check_token('consumer', consumer)}.{stream_seq}"


# --------------------------------------------------------------------------- artifacts


def claim_artifact(digest: str) -> str:
    return f"claims/{digest}"
