"""Who may do what on the bus: least-privilege NATS permissions per identity.

Each service is a NATS user that may publish only the event types it emits, plus the kernel's
error reports and dead letters on subjects that carry its own name (so nobody can report in
another's name), and may create consumers only on the event types it consumes or reads —
JetStream puts a consumer's name and filter subject into the create request's subject
(``$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>``), which is what makes these rules
enforceable:

- a service's durable consumers (``<service>__<type>``, shared by its replicas) are its own:
  only it may create one, with exactly its own filter, fetch from it, ack its messages and
  inspect it; nobody may delete it;
- consumers with random names (a broadcast replica's own, a reader's ephemeral one) are made
  by their owner and reachable only by name, which no identity can list.

Every durable consumer of every service is known from the code, so each identity is denied
the consumer API and the acks of all durables but its own (a deny wins over an allow).
Replies come to a per-user inbox prefix, so no user can listen in on another's fetches. The
``cli`` identity (run, watch, report, dlq) may publish any LoopTool event but no error report
or dead letter, and read every run without being able to take work from a service. No
identity but ``admin`` may update, purge or delete the event log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from looptool.kernel import names
from looptool.kernel.events import KERNEL_EVENTS, Event

ADMIN = "admin"  # provisioning and operator repair: no restrictions
CLI = "cli"

_API = "$JS.API"
_CONSUMER = f"{_API}.CONSUMER"
_STATE_STREAM = f"KV_{names.STATE_BUCKET}"
_ARTIFACT_STREAM = f"OBJ_{names.ARTIFACT_BUCKET}"
_STREAMS = (names.STREAM, _STATE_STREAM, _ARTIFACT_STREAM)
SENDER_BOUND = tuple(t for t in KERNEL_EVENTS if t.sender_field is not None)  # error reports, dead letters


class Permissions(msgspec.Struct, frozen=True):
    """Subjects a user may publish to and subscribe to (NATS wildcards); anything else is refused,
    and so is a publish to ``deny_publish`` even where an allow matches."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_publish: tuple[str, ...] = ()


class Role(msgspec.Struct, frozen=True):
    """What a service does on the bus, as its code declares it: the event types it consumes
    (True: every replica on a consumer of its own), emits, and reads without consuming."""

    consumes: Mapping[type[Event], bool]
    emits: frozenset[type[Event]]
    reads: frozenset[type[Event]] = frozenset()

    def durables(self, service: str) -> dict[str, str]:
        """Its shared durable consumers: name -> filter subject."""
        return {
            names.consumer_name(service, event_type): names.for_type(event_type)
            for event_type, broadcast in self.consumes.items()
            if not broadcast
        }

    def own_named(self) -> list[str]:
        """Filters of the consumers it creates under random names (broadcast and reads)."""
        types = {t for t, broadcast in self.consumes.items() if broadcast} | set(self.reads)
        return sorted(names.for_type(t) for t in types)


def inbox_prefix(identity: str) -> str:
    """Where ``identity``'s replies arrive; only it may subscribe there."""
    return f"_INBOX_{names.check_token('identity', identity)}"


def _common() -> list[str]:
    """What every client of the bus needs: bind to (or, on a fresh store, create) the stream and
    buckets; the state KV and the artifact store."""
    return [
        f"{_API}.INFO",
        f"{_API}.STREAM.NAMES",  # reading an object looks its stream up by subject
        *(f"{_API}.STREAM.INFO.{stream}" for stream in _STREAMS),
        # Create, never update: an existing stream's config changes only by the admin's hand.
        *(f"{_API}.STREAM.CREATE.{stream}" for stream in _STREAMS),
        f"$KV.{names.STATE_BUCKET}.>",
        f"{_API}.DIRECT.GET.{_STATE_STREAM}.>",
        f"{_API}.STREAM.MSG.GET.{_STATE_STREAM}",
        f"$O.{names.ARTIFACT_BUCKET}.>",
        f"{_API}.STREAM.MSG.GET.{_ARTIFACT_STREAM}",
        f"{_API}.DIRECT.GET.{_ARTIFACT_STREAM}.>",
        f"{_API}.STREAM.PURGE.{_ARTIFACT_STREAM}",  # replacing an object purges its old chunks
        f"{_CONSUMER}.CREATE.{_ARTIFACT_STREAM}",  # reading an object: an ordered consumer
        f"{_CONSUMER}.CREATE.{_ARTIFACT_STREAM}.>",
        f"{_CONSUMER}.DELETE.{_ARTIFACT_STREAM}.>",
        # Its flow-control replies: without them a read of more than a few MB stalls for good.
        f"$JS.FC.{_ARTIFACT_STREAM}.>",
        names.HEARTBEAT_SUBJECT,
    ]


def _on_consumer(name: str, *actions: str) -> list[str]:
    """The consumer API requests and acks on the event log's consumer ``name`` (may be ``*``)."""
    return [f"{_CONSUMER}.{action}.{names.STREAM}.{name}" for action in actions] + [f"$JS.ACK.{names.STREAM}.{name}.>"]


def _untouchable(name: str) -> list[str]:
    """Everything that could take, change or remove another's durable consumer ``name``."""
    return [
        f"{_CONSUMER}.CREATE.{names.STREAM}.{name}",
        f"{_CONSUMER}.CREATE.{names.STREAM}.{name}.>",
        *_on_consumer(name, "INFO", "MSG.NEXT", "DELETE"),
    ]


def _randomly_named(filters: Iterable[str]) -> list[str]:
    """Creating, reading and removing consumers under random names on ``filters``."""
    filters = list(filters)
    if not filters:
        return []
    creates = [f"{_CONSUMER}.CREATE.{names.STREAM}.*.{f}" for f in filters]
    return creates + _on_consumer("*", "INFO", "MSG.NEXT", "DELETE")


def bus_permissions(roles: Mapping[str, Role]) -> dict[str, Permissions]:
    """Every service's rights and the command line's, from what the services declare."""
    durables = {service: role.durables(service) for service, role in roles.items()}
    identities = {service: _service_permissions(service, role, durables) for service, role in roles.items()}
    theirs = sorted(name for owned in durables.values() for name in owned)
    identities[CLI] = Permissions(
        publish=(*_common(), f"{names.PREFIX}.*.>", *_randomly_named([f"{names.PREFIX}.>"])),
        subscribe=(f"{inbox_prefix(CLI)}.>", names.HEARTBEAT_SUBJECT),
        deny_publish=(
            *(names.for_type(t) for t in SENDER_BOUND),
            *(subject for name in theirs for subject in _untouchable(name)),
        ),
    )
    return identities


def _service_permissions(service: str, role: Role, durables: Mapping[str, Mapping[str, str]]) -> Permissions:
    own = durables[service]
    named = role.own_named()
    publish = [
        *_common(),
        *sorted(names.for_type(t) for t in role.emits if t.sender_field is None),
        *(names.for_type(t, sender=service) for t in SENDER_BOUND),
        *_randomly_named(named),
    ]
    for name, filter_subject in own.items():
        publish += [
            f"{_CONSUMER}.CREATE.{names.STREAM}.{name}.{filter_subject}",
            *_on_consumer(name, "INFO", "MSG.NEXT"),
        ]
    deny = [
        subject
        for other, owned in durables.items()
        if other != service
        for name in owned
        for subject in _untouchable(name)
    ]
    # Its own durables keep their filters: the random-name create rule must not re-point them.
    for name, filter_subject in own.items():
        deny += [f"{_CONSUMER}.CREATE.{names.STREAM}.{name}.{f}" for f in named if f != filter_subject]
        deny.append(f"{_CONSUMER}.DELETE.{names.STREAM}.{name}")
    return Permissions(publish=tuple(publish), subscribe=(f"{inbox_prefix(service)}.>",), deny_publish=tuple(deny))
