"""An in-memory bus for unit tests, in the spirit of dramatiq's ``StubBroker``.

:class:`StubBus` keeps the event log, artifacts and state in memory with the real bus's
semantics where handlers can tell (deduplicated publishing, atomic claims, events that round-trip
through the codec). :class:`StubRunner` is only a transport: it delivers the log — shared work to
one replica, broadcast subscriptions to every replica, a ``nak`` at once again — through the
runtime's own :class:`~looptool.kernel.runtime.MessagePath` (checks, retries, error reports, dead
letters, done markers), until nothing is left to deliver::

    bus = StubBus()
    runner = StubRunner(bus, settings, curator.service, judge.service)
    await bus.publish(RunRequested(...))
    await runner.run_until_idle()
    assert bus.of_type(DatasetReady)

Real NATS behaviour (redelivery timing, reconnects, claim checks) stays with the real-NATS tests;
``tests/test_runtime_contract.py`` runs the same message-path contract on both transports.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Iterable
from types import SimpleNamespace
from typing import Any, TypeVar

from looptool.kernel import names
from looptool.kernel.bus import decode_bytes
from looptool.kernel.errors import PermanentError, PoisonMessage
from looptool.kernel.events import ArtifactRef, DeadLetter, Event, decode_event, encode_event
from looptool.kernel.logs import get_logger
from looptool.kernel.runtime import Context, MessagePath, Resources, Service

E = TypeVar("E", bound=Event)


def subject_matches(filter_subject: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` one token, ``>`` the rest."""
    pattern = (
        "^"
        + r"\.".join(".+" if t == ">" else "[^.]+" if t == "*" else re.escape(t) for t in filter_subject.split("."))
        + "$"
    )
    return re.match(pattern, subject) is not None


class StubBus:
    def __init__(self) -> None:
        self.log: list[tuple[str, Event]] = []  # (subject, event), in publish order (None: undecodable)
        self.raw: list[bytes] = []  # each log entry's bytes, as a consumer receives them
        self.artifacts: dict[str, bytes] = {}
        self.state: dict[str, str] = {}
        self.revisions: dict[str, int] = {}
        self._revision = 0
        self._msg_ids: set[str] = set()
        self.duplicates = 0

    async def publish(self, event: Event, *, msg_id: str | None = None) -> bool:
        """Store the event (a copy, through the codec); False for a deduplicated repeat."""
        key = event.dedup_key() if msg_id is None else msg_id
        if key:
            names.check_header_value("message id", key)
            if key in self._msg_ids:
                self.duplicates += 1
                return False
            self._msg_ids.add(key)
        data = encode_event(event)
        self.log.append((names.for_event(event), decode_event(data)))
        self.raw.append(data)
        return True

    async def publish_raw(self, subject: str, data: bytes, msg_id: str = "") -> None:
        """Store bytes as they are on a subject (a poison message, a misfiled event): the log
        keeps what they decode to, or None when they do not."""
        try:
            event: Any = decode_bytes(data)
        except PoisonMessage:
            event = None
        self.log.append((subject, event))
        self.raw.append(data)

    async def decode(self, msg: StubMessage) -> Event:
        return decode_bytes(msg.data)

    async def payload(self, msg: StubMessage) -> bytes:
        return msg.data

    async def publish_many(self, events: Iterable[Event]) -> None:
        for event in events:
            await self.publish(event)

    async def put_artifact(self, name: str, data: bytes) -> ArtifactRef:
        self.artifacts[name] = data
        return ArtifactRef(
            bucket=names.ARTIFACT_BUCKET, name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest()
        )

    async def get_artifact(self, ref: ArtifactRef) -> bytes:
        if ref.bucket != names.ARTIFACT_BUCKET or ref.name not in self.artifacts:
            raise PermanentError(f"no artifact {ref.bucket}/{ref.name}")
        return self.artifacts[ref.name]

    async def claim(self, key: str, owner: str) -> str:
        if key not in self.state:
            await self.put_value(key, owner)
        return self.state[key]

    async def revision(self, key: str) -> tuple[str, int] | None:
        return (self.state[key], self.revisions[key]) if key in self.state else None

    async def take_over(self, key: str, revision: int, owner: str) -> bool:
        if self.revisions.get(key) != revision:
            return False
        await self.put_value(key, owner)
        return True

    async def value(self, key: str) -> str | None:
        return self.state.get(key)

    async def put_value(self, key: str, value: str) -> None:
        self.state[key] = value
        self._revision += 1  # one sequence for the bucket, as a KV stream numbers its messages
        self.revisions[key] = self._revision

    async def events(self, filter_subject: str) -> AsyncIterator[Event]:
        for subject, event in list(self.log):
            if event is not None and subject_matches(filter_subject, subject):
                yield event

    def of_type(self, event_type: type[E], run: str | None = None) -> list[E]:
        return [e for _, e in self.log if isinstance(e, event_type) and (run is None or e.run == run)]


class StubMessage:
    """A delivered message as the message path sees one (the parts of nats-py's ``Msg`` it uses);
    ``settled`` says how the path left it: "ack", "nak", "term" or None."""

    def __init__(self, subject: str, data: bytes, stream_seq: int) -> None:
        self.subject = subject
        self.data = data
        self.headers: dict[str, str] | None = None
        self.metadata = SimpleNamespace(num_delivered=0, sequence=SimpleNamespace(stream=stream_seq))
        self.settled: str | None = None

    async def ack(self) -> None:
        self.settled = "ack"

    async def nak(self, delay: float | None = None) -> None:
        self.settled = "nak"  # redelivered at once: the stub has no clock

    async def term(self) -> None:
        self.settled = "term"


class _Replica:
    def __init__(self, service: Service, bus: StubBus, settings: Any, index: int, resources: Resources) -> None:
        self.service = service
        self.ctx = Context(
            bus,
            settings,
            service.name,
            f"{service.name}-{index}",
            get_logger("looptool.stub").bind(service=service.name),
            service.emits,
            resources=resources,
        )
        self.paths = {
            event_type: MessagePath(self.ctx, event_type, sub, names.consumer_name(service.name, event_type))
            for event_type, sub in service.subscriptions.items()
        }
        self.position = 0  # for broadcast subscriptions: how far into the log this replica is


class StubRunner:
    """Delivers a :class:`StubBus`'s log to services, in log order, until it is quiet.
    ``resources`` stand in for what handlers get from ``ctx.use`` (scripted model clients, a
    training function): ``{factory: instance}``, given to every replica."""

    def __init__(
        self, bus: StubBus, settings: Any, *services: Service, replicas: int = 1, resources: Resources | None = None
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.replicas = {
            s.name: [_Replica(s, bus, settings, i, resources or {}) for i in range(replicas)] for s in services
        }
        self.services = services
        self.positions = {s.name: 0 for s in services}  # shared work: how far each service is
        self.turn = 0
        self._routes: dict[tuple[str, str], type[Event] | None] = {}

    @property
    def dead_letters(self) -> list[DeadLetter]:
        return self.bus.of_type(DeadLetter)

    async def run_until_idle(self, max_steps: int = 1_000_000) -> int:
        """Deliver until no handler has anything left; returns how many deliveries were made."""
        delivered = 0
        while delivered < max_steps:
            progressed = False
            for service in self.services:
                progressed |= await self._step(service)
                delivered += progressed
            if not progressed:
                return delivered
        raise RuntimeError(f"still busy after {max_steps} deliveries")

    async def tick(self) -> None:
        """Run every service's timers once in every replica."""
        for service in self.services:
            for replica in self.replicas[service.name]:
                for timer, _period in service.timers:
                    await timer(replica.ctx)

    async def close(self) -> None:
        for replicas in self.replicas.values():
            for replica in replicas:
                await replica.ctx.close()

    def _consumed_as(self, service: Service, position: int) -> type[Event] | None:
        """Which of the service's consumers gets the message: the one whose subject filter its
        subject matches (a consumer is bound to a subject, not to what the bytes decode to)."""
        subject = self.bus.log[position][0]
        key = (service.name, subject)
        if key not in self._routes:
            self._routes[key] = next(
                (t for t in service.subscriptions if subject_matches(names.for_type(t), subject)), None
            )
        return self._routes[key]

    async def _step(self, service: Service) -> bool:
        progressed = False
        # Shared work: the next undelivered event goes to one replica, round robin.
        position = self.positions[service.name]
        if position < len(self.bus.log):
            self.positions[service.name] = position + 1
            event_type = self._consumed_as(service, position)
            if event_type is not None and not service.subscriptions[event_type].broadcast:
                replicas = self.replicas[service.name]
                self.turn += 1
                await self._deliver(replicas[self.turn % len(replicas)], event_type, position)
            progressed = True
        # Broadcast: every replica folds every event.
        for replica in self.replicas[service.name]:
            if replica.position < len(self.bus.log):
                position = replica.position
                replica.position += 1
                event_type = self._consumed_as(service, position)
                if event_type is not None and service.subscriptions[event_type].broadcast:
                    await self._deliver(replica, event_type, position)
                progressed = True
        return progressed

    async def _deliver(self, replica: _Replica, event_type: type[Event], position: int) -> None:
        """One message through the runtime's path, delivered again while it is nak'ed (or left
        unsettled), at most ``max_deliver`` times, as the server would."""
        msg = StubMessage(self.bus.log[position][0], self.bus.raw[position], stream_seq=position + 1)
        path = replica.paths[event_type]
        while msg.settled in (None, "nak") and msg.metadata.num_delivered < self.settings.runtime.max_deliver:
            msg.settled = None
            msg.metadata.num_delivered += 1
            await path.process(msg)
