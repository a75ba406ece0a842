"""An in-memory bus for unit tests, in the spirit of dramatiq's ``StubBroker``.

:class:`StubBus` keeps the event log, artifacts and state in memory with the real bus's
semantics where handlers can tell (deduplicated publishing, atomic claims, events that round-trip
through the codec). :class:`StubRunner` delivers the log to services' handlers the way
:func:`looptool.kernel.runtime.run_service` does — shared work goes to one replica, broadcast
subscriptions to every replica, a failing handler is retried up to ``max_deliver`` times and then
dead-lettered (at once for a :class:`PermanentError`) — until nothing is left to deliver::

    bus = StubBus()
    runner = StubRunner(bus, settings, curator.service, judge.service)
    await bus.publish(RunRequested(...))
    await runner.run_until_idle()
    assert bus.of_type(DatasetReady)

Real NATS behaviour (redelivery timing, reconnects, claim checks) stays with the real-NATS tests.
"""

from __future__ import annotations

import hashlib
import re
import traceback
from collections.abc import AsyncIterator, Iterable
from typing import Any, TypeVar

from looptool.kernel import names
from looptool.kernel.errors import PermanentError
from looptool.kernel.events import ArtifactRef, DeadLetter, Event, ServiceError, decode_event, encode_event, event_tag
from looptool.kernel.logs import get_logger
from looptool.kernel.runtime import Context, Service

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
        self.log: list[tuple[str, Event]] = []  # (subject, event), in publish order
        self.artifacts: dict[str, bytes] = {}
        self.state: dict[str, str] = {}
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
        self.log.append((names.for_event(event), decode_event(encode_event(event))))
        return True

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
        return self.state.setdefault(key, owner)

    async def take_over(self, key: str, expected: str, owner: str) -> bool:
        if self.state.get(key, expected) != expected:
            return False
        self.state[key] = owner
        return True

    async def value(self, key: str) -> str | None:
        return self.state.get(key)

    async def put_value(self, key: str, value: str) -> None:
        self.state[key] = value

    async def events(self, filter_subject: str) -> AsyncIterator[Event]:
        for subject, event in list(self.log):
            if subject_matches(filter_subject, subject):
                yield event

    def of_type(self, event_type: type[E], run: str | None = None) -> list[E]:
        return [e for _, e in self.log if isinstance(e, event_type) and (run is None or e.run == run)]


class _Replica:
    def __init__(self, service: Service, bus: StubBus, settings: Any, index: int) -> None:
        self.service = service
        self.ctx = Context(
            bus,
            settings,
            service.name,
            f"{service.name}-{index}",
            get_logger("looptool.stub").bind(service=service.name),
            service.emits,
        )
        self.position = 0  # for broadcast subscriptions: how far into the log this replica is


class StubRunner:
    """Delivers a :class:`StubBus`'s log to services, in log order, until it is quiet."""

    def __init__(self, bus: StubBus, settings: Any, *services: Service, replicas: int = 1) -> None:
        self.bus = bus
        self.settings = settings
        self.replicas = {s.name: [_Replica(s, bus, settings, i) for i in range(replicas)] for s in services}
        self.services = services
        self.positions = {s.name: 0 for s in services}  # shared work: how far each service is
        self.turn = 0
        self.dead_letters: list[DeadLetter] = []

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

    async def _step(self, service: Service) -> bool:
        progressed = False
        # Shared work: the next undelivered event goes to one replica, round robin.
        position = self.positions[service.name]
        if position < len(self.bus.log):
            self.positions[service.name] = position + 1
            subject, event = self.bus.log[position]
            subscription = service.subscriptions.get(type(event))
            if subscription is not None and not subscription.broadcast:
                replicas = self.replicas[service.name]
                self.turn += 1
                await self._deliver(replicas[self.turn % len(replicas)], subject, event)
            progressed = True
        # Broadcast: every replica folds every event.
        for replica in self.replicas[service.name]:
            if replica.position < len(self.bus.log):
                subject, event = self.bus.log[replica.position]
                replica.position += 1
                subscription = service.subscriptions.get(type(event))
                if subscription is not None and subscription.broadcast:
                    await self._deliver(replica, subject, event)
                progressed = True
        return progressed

    async def _deliver(self, replica: _Replica, subject: str, event: Event) -> None:
        handler = replica.service.subscriptions[type(event)].handler
        max_deliver = self.settings.runtime.max_deliver
        for attempt in range(1, max_deliver + 1):
            try:
                await handler(replica.ctx, event)
                return
            except Exception as exc:
                error = "".join(traceback.format_exception_only(exc)).strip()
                await self.bus.publish(
                    ServiceError(
                        run=event.run,
                        round=event.round,
                        service=replica.service.name,
                        replica=replica.ctx.replica,
                        error=error,
                        subject=subject,
                        sample_id=event.work_item(),
                    )
                )
                if attempt == max_deliver or isinstance(exc, PermanentError):
                    letter = DeadLetter(
                        run=event.run,
                        round=event.round,
                        service=replica.service.name,
                        subject=subject,
                        stream_seq=len(self.bus.log),
                        num_delivered=attempt,
                        error=error,
                        data=encode_event(event),
                        stage=event_tag(type(event)),
                        sample_id=event.work_item(),
                    )
                    self.dead_letters.append(letter)
                    await self.bus.publish(letter)
                    return
