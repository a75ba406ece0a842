"""Who may do what on the bus: least-privilege NATS permissions per identity.

Each service is a NATS user that may publish only the event types it emits (plus the kernel's
error reports, dead letters and heartbeats) and may create consumers only on the event types it
consumes or reads — JetStream puts a consumer's filter subject into the create request's subject
(``$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>``), which is what makes the second rule
enforceable. Replies come to a per-user inbox prefix, so no user can listen in on another's
fetches. The ``cli`` identity (run, watch, report, dlq) may publish any LoopTool event and read
every run. No identity but ``admin`` may update, purge or delete the event log.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from looptool.kernel import names
from looptool.kernel.events import DeadLetter, Event, ServiceError

ADMIN = "admin"  # provisioning and operator repair: no restrictions
CLI = "cli"

_API = "$JS.API"
_STATE_STREAM = f"KV_{names.STATE_BUCKET}"
_ARTIFACT_STREAM = f"OBJ_{names.ARTIFACT_BUCKET}"
_STREAMS = (names.STREAM, _STATE_STREAM, _ARTIFACT_STREAM)


class Permissions(msgspec.Struct, frozen=True):
    """Subjects a user may publish to and subscribe to (NATS wildcards); anything else is refused."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def inbox_prefix(identity: str) -> str:
    """Where ``identity``'s replies arrive; only it may subscribe there."""
    return f"_INBOX_{names.check_token('identity', identity)}"


def _consume(filter_subject: str) -> str:
    return f"{_API}.CONSUMER.CREATE.{names.STREAM}.*.{filter_subject}"


def _common(identity: str) -> list[str]:
    """What every client of the bus needs: bind to (or, on a fresh store, create) the stream and
    buckets; pull, ack and inspect its consumers; the state KV and the artifact store."""
    return [
        f"{_API}.INFO",
        f"{_API}.STREAM.NAMES",  # reading an object looks its stream up by subject
        *(f"{_API}.STREAM.INFO.{stream}" for stream in _STREAMS),
        # Create, never update: an existing stream's config changes only by the admin's hand.
        *(f"{_API}.STREAM.CREATE.{stream}" for stream in _STREAMS),
        f"{_API}.CONSUMER.INFO.{names.STREAM}.*",
        f"{_API}.CONSUMER.MSG.NEXT.{names.STREAM}.*",
        f"{_API}.CONSUMER.DELETE.{names.STREAM}.*",
        f"$JS.ACK.{names.STREAM}.>",
        f"$KV.{names.STATE_BUCKET}.>",
        f"{_API}.DIRECT.GET.{_STATE_STREAM}.>",
        f"{_API}.STREAM.MSG.GET.{_STATE_STREAM}",
        f"$O.{names.ARTIFACT_BUCKET}.>",
        f"{_API}.STREAM.MSG.GET.{_ARTIFACT_STREAM}",
        f"{_API}.DIRECT.GET.{_ARTIFACT_STREAM}.>",
        f"{_API}.STREAM.PURGE.{_ARTIFACT_STREAM}",  # replacing an object purges its old chunks
        f"{_API}.CONSUMER.CREATE.{_ARTIFACT_STREAM}",  # reading an object: an ordered consumer
        f"{_API}.CONSUMER.CREATE.{_ARTIFACT_STREAM}.>",
        f"{_API}.CONSUMER.DELETE.{_ARTIFACT_STREAM}.>",
        # Its flow-control replies: without them a read of more than a few MB stalls for good.
        f"$JS.FC.{_ARTIFACT_STREAM}.>",
        names.HEARTBEAT_SUBJECT,
    ]


def service_permissions(
    name: str, consumes: Iterable[type[Event]], emits: Iterable[type[Event]], reads: Iterable[type[Event]] = ()
) -> Permissions:
    """A service's rights: publish what it emits, consume what it subscribes to or reads."""
    published: set[type[Event]] = {*emits, ServiceError, DeadLetter}
    consumed: set[type[Event]] = {*consumes, *reads}
    return Permissions(
        publish=(
            *_common(name),
            *sorted(names.for_type(t) for t in published),
            *sorted(_consume(names.for_type(t)) for t in consumed),
        ),
        subscribe=(f"{inbox_prefix(name)}.>",),
    )


def cli_permissions() -> Permissions:
    """The operator's command line: submit runs, replay dead letters, read and follow any run."""
    return Permissions(
        publish=(*_common(CLI), f"{names.PREFIX}.*.>", _consume(">")),
        subscribe=(f"{inbox_prefix(CLI)}.>", names.HEARTBEAT_SUBJECT),
    )
