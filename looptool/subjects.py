"""Subject names: the only place that knows how subjects, streams and consumers are spelled.

Layout: ``looptool.<run>.<stage>.<event>``, where ``<stage>.<event>`` is the event's tag.
"""

from __future__ import annotations

import re

from .schemas import Event, event_tag

PREFIX = "looptool"
STREAM = "LOOPTOOL"
STREAM_SUBJECTS = f"{PREFIX}.>"
ARTIFACT_BUCKET = "looptool-artifacts"
STATE_BUCKET = "looptool-state"
HEARTBEAT_SUBJECT = f"{PREFIX}._live.heartbeat"  # core NATS, not stored

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class InvalidName(ValueError):
    pass


def check_token(kind: str, value: str) -> str:
    """Run, service and adapter names become subject tokens: no dots, wildcards or paths."""
    if not _TOKEN.match(value):
        raise InvalidName(f"{kind} name {value!r} must match {_TOKEN.pattern}")
    return value


def for_event(event: Event) -> str:
    return f"{PREFIX}.{check_token('run', event.run)}.{event_tag(type(event))}"


def for_type(event_type: type[Event], run: str = "*") -> str:
    """The subject filter for one event type, in one run or (default) in every run."""
    if run != "*":
        check_token("run", run)
    return f"{PREFIX}.{run}.{event_tag(event_type)}"


def run_filter(run: str) -> str:
    return f"{PREFIX}.{check_token('run', run)}.>"


def dead_letters(run: str = "*") -> str:
    return f"{PREFIX}.{run}.dlq.letter"


def consumer_name(service: str, event_type: type[Event]) -> str:
    """One durable consumer per (service, event type): every replica binds to it."""
    return f"{check_token('service', service)}__{event_tag(event_type).replace('.', '_')}"
