"""The service runtime: everything a service needs that is not its method.

A service declares what it listens to::

    probe = Service("probe")

    @probe.on(ModelReady)
    async def fan_out(ctx: Context, event: ModelReady) -> None:
        ...
        await ctx.publish_many(tasks)

and :func:`run_service` does the rest: connect, one durable pull consumer per event type
(shared by all replicas), bounded concurrency, ``ack`` on success, ``nak`` with backoff on
failure, a :class:`~looptool.kernel.events.DeadLetter` + ``term`` after ``max_deliver`` attempts,
in-progress pings while a handler runs longer than ``ack_wait``, re-subscription after a NATS
restart, heartbeats, and a graceful drain on SIGTERM/SIGINT.

Handlers must be idempotent: a message can be delivered again after a crash. Publishing
through :class:`Context` is deduplicated by each event's ``dedup_key``. Handlers run on a
fixed pool of worker tasks, so log context a handler adds is bound with structlog's
``bound_contextvars`` (unbound when the block ends), not ``bind_contextvars``; the run, round
and sample of the message at hand come with every line it logs (``logs.set_work_context``).
"""

from __future__ import annotations

import collections
import functools
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

import anyio
import anyio.abc
import msgspec
import structlog
from nats.aio.msg import Msg

from looptool.kernel import logs, names
from looptool.kernel.bus import Bus
from looptool.kernel.errors import PermanentError, PoisonMessage, describe, is_permanent
from looptool.kernel.events import (
    ArtifactRef,
    DeadLetter,
    Event,
    ServiceError,
    ServiceHeartbeat,
    encode_event,
    event_tag,
)
from looptool.kernel.logs import get_logger
from looptool.kernel.settings import KernelSettings

E = TypeVar("E", bound=Event)
T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")  # a domain's settings tree (LoopTool's: looptool.loop.settings.Settings)
Handler = Callable[["Context[Any]", Any], Awaitable[None]]
Resources = Mapping[Callable[..., Any], Any]  # factory -> the instance ``ctx.use(factory)`` returns

SYSTEM_RUN = names.SYSTEM_RUN
BROADCAST_INACTIVE = 300.0  # seconds before a dead replica's own consumer is removed


class Subscription(msgspec.Struct, frozen=True):
    handler: Handler
    concurrency: int | None = None  # None: settings.runtime.concurrency
    # Every replica gets every event (its own consumer, replayed from the start of the log when
    # the process starts) instead of sharing the work: for folds such as the round ledger.
    broadcast: bool = False
    # A redelivered message whose handler already finished (its ack was lost to a crash or a
    # NATS restart) is acked without running the handler again: for work that costs a model call.
    once: bool = False


Timer = Callable[["Context[Any]"], Awaitable[None]]


class Service:
    """A named set of event handlers and timers. Nothing else: no I/O happens here."""

    def __init__(
        self,
        name: str,
        description: str = "",
        *,
        emits: Iterable[type[Event]] | None = None,
        reads: Iterable[type[Event]] = (),
        check: Callable[[Any], None] | None = None,
    ) -> None:
        """``emits``: the event types the handlers publish (besides the kernel's error reports
        and dead letters) — the bus lets this service publish those and no others; ``None``
        leaves it undeclared (no bus permissions can be derived). ``reads``: event types a
        handler looks up with :meth:`Context.events` without consuming them. ``check(settings)``
        runs before the service connects: it raises to refuse settings this machine cannot serve."""
        self.name = names.check_token("service", name)
        self.description = description
        self.emits = None if emits is None else frozenset(emits)
        self.reads = frozenset(reads)
        self.check = check
        self.subscriptions: dict[type[Event], Subscription] = {}
        self.timers: list[tuple[Timer, Callable[[Any], float]]] = []  # (handler, period(settings))

    def on(
        self, *event_types: type[E], concurrency: int | None = None, broadcast: bool = False, once: bool = False
    ) -> Callable[[Callable[[Context[Any], E], Awaitable[None]]], Callable[[Context[Any], E], Awaitable[None]]]:
        """Register a handler for one or more event types. ``concurrency`` caps the handlers in
        flight per replica for these types (e.g. 1 for a trainer on one GPU); ``broadcast``
        delivers every event to every replica; ``once`` never runs the handler again for a
        message it finished (see :class:`Subscription`)."""

        def register(
            handler: Callable[[Context[Any], E], Awaitable[None]],
        ) -> Callable[[Context[Any], E], Awaitable[None]]:
            for event_type in event_types:
                if event_type in self.subscriptions:
                    raise ValueError(f"service {self.name}: two handlers for {event_tag(event_type)}")
                self.subscriptions[event_type] = Subscription(handler, concurrency, broadcast, once)
            return handler

        return register

    def every(self, period: Callable[[Any], float]) -> Callable[[Timer], Timer]:
        """Run a handler periodically in every replica; ``period(settings)`` gives the seconds.
        A timer that raises is logged and runs again next period."""

        def register(handler: Timer) -> Timer:
            self.timers.append((handler, period))
            return handler

        return register


class BusLike(Protocol):
    """What a :class:`Context` needs of a bus: the real one, or the in-memory test bus."""

    async def publish(self, event: Event, *, msg_id: str | None = None) -> Any: ...
    async def publish_many(self, events: Iterable[Event]) -> Any: ...
    async def put_artifact(self, name: str, data: bytes) -> ArtifactRef: ...
    async def get_artifact(self, ref: ArtifactRef) -> bytes: ...
    async def claim(self, key: str, owner: str) -> str: ...
    async def revision(self, key: str) -> tuple[str, int] | None: ...
    async def take_over(self, key: str, revision: int, owner: str) -> bool: ...
    async def value(self, key: str) -> str | None: ...
    async def put_value(self, key: str, value: str) -> None: ...
    def events(self, filter_subject: str) -> AsyncIterator[Event]: ...
    async def decode(self, msg: Any) -> Event: ...
    async def payload(self, msg: Any) -> bytes: ...


class Delivery(Protocol):
    """What the message path needs of a delivered message: nats-py's ``Msg`` has it, and so does
    the in-memory transport's (:class:`looptool.kernel.testing.StubMessage`)."""

    subject: str
    data: bytes
    headers: dict[str, str] | None

    @property
    def metadata(self) -> Any: ...  # .num_delivered, .sequence.stream
    async def ack(self) -> None: ...
    async def nak(self, delay: float | None = None) -> None: ...
    async def term(self) -> None: ...


class Context(Generic[S]):
    """What a handler may use: publishing, artifacts, once-only claims, a run's events, the
    settings (typed by the domain: ``Context[Settings]``), a bound logger, and per-process
    resources (:meth:`use`)."""

    def __init__(
        self,
        bus: BusLike,
        settings: S,
        service: str,
        replica: str,
        log: Any,
        emits: frozenset[type[Event]] | None = None,
        resources: Resources | None = None,
    ) -> None:
        self.bus = bus
        self.settings: S = settings
        self.service = service
        self.emits = emits
        self.replica = replica
        self.log = log
        self._resources: dict[Callable[..., Any], Any] = {}
        self._given = dict(resources or {})
        self._leases: dict[str, tuple[int, float]] = {}  # key -> (revision seen, since when)

    def use(self, factory: Callable[[Context[S]], R]) -> R:
        """One instance of ``factory(ctx)`` per service process (model clients, caches, ledgers):
        created on first use, closed with the service when it has an async ``close``. An
        instance given for ``factory`` when the context was made (a test's scripted model
        client) is used instead, and left to its giver to close."""
        if factory in self._given:
            given: R = self._given[factory]
            return given
        if factory not in self._resources:
            self._resources[factory] = factory(self)
        resource: R = self._resources[factory]
        return resource

    async def close(self) -> None:
        for resource in self._resources.values():
            close = getattr(resource, "close", None)
            if close is not None:
                await close()
        self._resources.clear()

    async def publish(self, event: Event) -> None:
        self._check_emits(event)
        await self.bus.publish(event)

    async def publish_many(self, events: Iterable[Event]) -> None:
        events = list(events)
        for event in events:
            self._check_emits(event)
        await self.bus.publish_many(events)

    def _check_emits(self, event: Event) -> None:
        # The bus would refuse it anyway (per-service permissions); here the mistake is named.
        if self.emits is not None and type(event) not in self.emits:
            raise PermanentError(
                f"service {self.service} publishes {event_tag(type(event))}, which it does not declare"
            )

    async def put_artifact(self, name: str, data: bytes) -> ArtifactRef:
        return await self.bus.put_artifact(name, data)

    async def get_artifact(self, ref: ArtifactRef) -> bytes:
        return await self.bus.get_artifact(ref)

    async def load(self, ref: ArtifactRef, item_type: type[T]) -> list[T]:
        """A JSONL artifact (a dataset) decoded into ``item_type``; a bad line is permanent."""
        data = await self.get_artifact(ref)
        decoder = msgspec.json.Decoder(item_type)
        items = []
        for number, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(decoder.decode(line))
            except msgspec.MsgspecError as exc:
                raise PermanentError(f"{ref.name}:{number}: {exc}") from None
        return items

    async def claim(self, key: str, owner: str | None = None) -> bool:
        """Claim a once-only action (KV create) for ``owner`` (default: this replica): True for
        exactly one owner, ever — again for that owner on a redelivery."""
        owner = owner or self.replica
        return await self.bus.claim(key, owner) == owner

    async def holder(self, key: str) -> str | None:
        return await self.bus.value(key)

    async def lease(self, key: str, ttl: float, finished: Callable[[], object] = lambda: False) -> bool:
        """Whether this replica may do the once-only action under ``key``: it claims it, or takes
        it over (compare-and-set on the key's revision) from a holder whose claim has not moved
        for ``ttl`` seconds — no renewal (:meth:`renew`), no other taker — while the action is
        still not ``finished``. Staleness is the key's revision standing still, as this replica
        sees it: no clock is compared with another replica's."""
        if await self.claim(key):
            return True
        seen = await self.bus.revision(key)
        if seen is None:  # released meanwhile
            return await self.claim(key)
        holder, revision = seen
        now = time.monotonic()
        since = self._leases.get(key)
        if since is None or since[0] != revision:
            since = self._leases[key] = (revision, now)
        if now - since[1] < ttl or finished():
            return False
        self.log.warning("taking over an unfinished action", key=key, holder=holder)
        return await self.bus.take_over(key, revision, self.replica)

    async def renew(self, key: str) -> bool:
        """Show a held lease alive (its revision moves); False when this replica no longer holds it."""
        seen = await self.bus.revision(key)
        if seen is None or seen[0] != self.replica:
            return False
        return await self.bus.take_over(key, seen[1], self.replica)

    async def mark(self, key: str, value: str = "1") -> None:
        await self.bus.put_value(key, value)

    async def gather(self, key: str, part: int, parts: int, value: str) -> list[str] | None:
        """A scatter/gather barrier in the state store: record part ``part`` of ``parts`` under
        ``key`` and return every part's value once all are in, else None. Each caller records
        before it looks, so the last to finish sees them all; callers finishing together may
        both see them — what follows must be deduplicated (an event's ``dedup_key``)."""
        await self.mark(part_key(key, part), value)
        values = [await self.holder(part_key(key, k)) for k in range(parts)]
        return None if any(v is None for v in values) else [v for v in values if v is not None]

    async def part(self, key: str, part: int) -> str | None:
        """What :meth:`gather` recorded for part ``part`` (None: not yet)."""
        return await self.holder(part_key(key, part))

    async def events(self, run: str, event_type: type[E]) -> AsyncIterator[E]:
        """A run's stored events of one type (declared in the service's ``reads``), in log order."""
        async for event in self.bus.events(names.for_type(event_type, run)):
            if isinstance(event, event_type):
                yield event


def part_key(key: str, part: int) -> str:
    return f"{key}.p{part}"


class _Stats:
    def __init__(self) -> None:
        self.in_flight = 0
        self.handled = 0
        self.failed = 0
        self.dead = 0
        self.skipped = 0  # redeliveries of finished work, acked without running the handler


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def run_service(
    service: Service,
    settings: KernelSettings,
    *,
    replica: str | None = None,
    stop: anyio.Event | None = None,
    ready: anyio.Event | None = None,
    handle_signals: bool = True,
) -> None:
    """Run ``service`` until ``stop`` is set or SIGTERM/SIGINT arrives, then drain."""
    if service.check is not None:
        service.check(settings)
    replica = replica or default_replica_id()
    stop = stop or anyio.Event()
    structlog.contextvars.bind_contextvars(service=service.name, replica=replica)
    log = get_logger("looptool.runtime")
    bus = await Bus.connect(settings.nats, name=f"{service.name}:{replica}", identity=service.name)
    ctx = Context(bus, settings, service.name, replica, log, service.emits)
    stats = _Stats()
    try:
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(_stop_on_signal, stop)
            tg.start_soon(_heartbeat, bus, ctx, stats, stop)
            for timer, period in service.timers:
                tg.start_soon(_every, ctx, timer, period(settings), stop)
            # Each consumer has its own slots: a consumer idling in a long-poll must not hold
            # capacity that another event type's work could use.
            consumers = [
                _Consumer(ctx, event_type, sub, sub.concurrency or settings.runtime.concurrency, stats, stop)
                for event_type, sub in service.subscriptions.items()
            ]
            for consumer in consumers:
                await consumer.subscribe()
            log.info("service ready", consumers=[c.name for c in consumers])
            if ready is not None:
                ready.set()
            async with anyio.create_task_group() as work:
                for consumer in consumers:
                    work.start_soon(consumer.run)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await ctx.close()
            await bus.close()
        log.info(
            "service stopped",
            handled=stats.handled,
            failed=stats.failed,
            dead_lettered=stats.dead,
            finished_before=stats.skipped,
        )


async def _stop_on_signal(stop: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            get_logger("looptool.runtime").info("draining", signal=signal.Signals(signum).name)
            stop.set()
            return


async def _every(ctx: Context[Any], timer: Timer, period: float, stop: anyio.Event) -> None:
    while not stop.is_set():
        with anyio.move_on_after(period):
            await stop.wait()
        if stop.is_set():
            return
        try:
            await timer(ctx)
        except Exception as exc:
            ctx.log.warning("timer failed", timer=timer.__name__, error=repr(exc))


async def _heartbeat(bus: Bus, ctx: Context[Any], stats: _Stats, stop: anyio.Event) -> None:
    # Heartbeats go over core NATS (not stored in the log): they are liveness, not history.
    while not stop.is_set():
        beat = ServiceHeartbeat(
            run=SYSTEM_RUN,
            service=ctx.service,
            replica=ctx.replica,
            in_flight=stats.in_flight,
            handled=stats.handled,
            failed=stats.failed,
        )
        try:
            await bus.nc.publish(names.HEARTBEAT_SUBJECT, encode_event(beat))
        except Exception as exc:  # a disconnected client must not kill the service
            ctx.log.debug("heartbeat not sent", error=repr(exc))
        with anyio.move_on_after(ctx.settings.runtime.heartbeat_interval):
            await stop.wait()


class MessagePath:
    """What happens to one delivered message, on every transport: decode (a poison message is
    dead-lettered on first sight), the delivery check (:func:`names.misfiled`), the done marker
    of ``once`` work, the handler, then ``ack`` — or an error report and a retry with backoff,
    or, on the last attempt or a permanent error, a dead letter and ``term``. The NATS consumer
    (:class:`_Consumer`) and the in-memory runner (:class:`looptool.kernel.testing.StubRunner`)
    only fetch messages and hand them here."""

    def __init__(self, ctx: Context[Any], event_type: type[Event], subscription: Subscription, name: str) -> None:
        self.ctx = ctx
        self.bus: BusLike = ctx.bus
        self.event_type = event_type
        self.handler = subscription.handler
        self.broadcast = subscription.broadcast
        self.once = subscription.once and not subscription.broadcast
        self.name = name  # the consumer's: done markers are keyed by it
        self.runtime = ctx.settings.runtime
        self.stats = _Stats()

    def _started(self, msg: Delivery) -> None:
        """Bookkeeping of the transport when a message enters the path (none here)."""

    def _finished(self, msg: Delivery) -> None:
        """Bookkeeping of the transport when a message leaves the path (none here)."""

    async def process(self, msg: Delivery) -> None:
        # The path every message takes is kept to one coroutine and one await of the runtime's
        # own (decoding): each layer of coroutines was a frame and an await more per message.
        self._started(msg)
        # Workers are reused: the log context set for one message is reset after it.
        context = None
        try:
            try:
                event = self._checked(msg, await self.bus.decode(msg))
            except Exception as exc:
                # A poison message never gets better: dead-letter it on first sight. Nothing on
                # this path may end the service — every replica would die in turn on it.
                context = logs.set_work_context(lambda: {"subject": msg.subject})
                await self._dead_letter(msg, str(exc) if isinstance(exc, PoisonMessage) else f"undecodable: {exc!r}")
                return
            context = logs.set_work_context(functools.partial(_work_context, event))
            done = names.done_key(self.name, msg.metadata.sequence.stream) if self.once else ""
            if done and msg.metadata.num_delivered > 1 and await self._finished_before(done):
                self.stats.skipped += 1
                await _quietly(msg.ack())
                return
            try:
                await self.handler(self.ctx, event)
            except Exception as exc:
                await self._failed(msg, event, exc)
                return
            if done:  # before the ack: a redelivery after a lost ack finds it
                await _quietly(self.bus.put_value(done, "1"))
            self.stats.handled += 1
            try:  # best effort: a lost ack means a redelivery, which handlers tolerate
                await msg.ack()
            except Exception as exc:
                self.ctx.log.debug("ack failed", error=repr(exc))
        except Exception as exc:  # the runtime's own bug must not take the service down either
            self.ctx.log.error("message processing failed", error=repr(exc))
        finally:
            if context is not None:
                logs.reset_work_context(context)
            self._finished(msg)

    async def _finished_before(self, done_key: str) -> bool:
        try:
            return await self.bus.value(done_key) is not None
        except Exception as exc:  # not knowing means doing the work again, never losing it
            self.ctx.log.warning("done marker unreadable", error=repr(exc))
            return False

    def _checked(self, msg: Delivery, event: Event) -> Event:
        """The event, if it is one this consumer may act on; :class:`PoisonMessage` if not."""
        if not isinstance(event, self.event_type):
            raise PoisonMessage(f"a {event_tag(type(event))} event on {self.event_type.__name__}'s subject")
        refusal = names.misfiled(msg.subject, event)
        if refusal is not None:
            raise PoisonMessage(refusal)
        return event

    async def _failed(self, msg: Delivery, event: Event, exc: Exception) -> None:
        """A handler raised: report it, then retry with backoff or, on the last attempt or a
        permanent error, dead-letter the message."""
        meta = msg.metadata
        self.stats.failed += 1
        error = describe(exc)
        self.ctx.log.warning("handler failed", attempt=meta.num_delivered, error=error)
        await self._report_error(event, msg.subject, error)
        if meta.num_delivered >= self.runtime.max_deliver or is_permanent(exc):
            await self._dead_letter(msg, error, event)
        else:
            backoff = self.runtime.backoff
            delay = backoff[min(meta.num_delivered - 1, len(backoff) - 1)] if backoff else None
            await _quietly(msg.nak(delay=delay))

    async def _report_error(self, event: Event, subject: str, error: str) -> None:
        report = ServiceError(
            run=event.run,
            round=event.round,
            service=self.ctx.service,
            replica=self.ctx.replica,
            error=error[:2000],
            subject=subject,
            sample_id=_work_context(event).get("sample"),
        )
        await _quietly(self.bus.publish(report))

    async def _dead_letter(self, msg: Delivery, error: str, event: Event | None = None) -> None:
        meta = msg.metadata
        try:
            data = await self.bus.payload(msg)
        except Exception:  # a claim check that names nothing: keep what the message itself held
            data = msg.data
        letter = DeadLetter(
            run=event.run if event is not None else names.run_of(msg.subject),
            round=event.round if event is not None else 0,
            service=self.ctx.service,
            subject=msg.subject,
            stream_seq=meta.sequence.stream,
            num_delivered=meta.num_delivered,
            error=error[:4000],
            data=data,
            msg_id=_printable((msg.headers or {}).get("Nats-Msg-Id", "")),
            stage=event_tag(type(event)) if event is not None else "",
            sample_id=event.work_item() if event is not None else None,
        )
        try:
            await self.bus.publish(letter)
        except Exception as exc:
            # Without a stored dead letter the message must not be dropped: leave it unacked.
            self.ctx.log.error("dead letter not stored; message left for redelivery", error=repr(exc))
            return
        self.stats.dead += 1
        self.ctx.log.error("dead-lettered", error=error)
        await _quietly(msg.term())


class _Consumer(MessagePath):
    """Pulls one event type from its durable consumer and hands each message to the path."""

    def __init__(
        self,
        ctx: Context[Any],
        event_type: type[Event],
        subscription: Subscription,
        limit: int,
        stats: _Stats,
        stop: anyio.Event,
    ) -> None:
        name = names.consumer_name(ctx.service, event_type)
        if subscription.broadcast:  # this process's own consumer, replayed from the log's start
            name = f"{name}__{uuid.uuid4().hex[:12]}"
        super().__init__(ctx, event_type, subscription, name)
        self.stats = stats  # the service's, shared by its consumers
        self.limit = limit
        self._free = limit  # workers without a message; the fetch loop asks for at most this many
        self._room = anyio.Event()  # set when a quarter of the batch is free again
        self.stop = stop
        self.nats: Bus = ctx.bus  # type: ignore[assignment]  # run_service always gives the real one
        self.sub: Any = None
        self.fetch_batch = min(self.runtime.fetch_batch, limit)
        self._refill = max(1, self.fetch_batch // 4)
        self._seen_reconnects = -1
        self._working: dict[int, tuple[Msg, Any]] = {}  # id(msg) -> (msg, handler start)
        self._queue: collections.deque[Msg] = collections.deque()  # fetched, for the workers
        self._idle: collections.deque[anyio.Event] = collections.deque()  # workers waiting for work
        self._waking = 0  # workers woken that have not taken a message yet

    async def subscribe(self) -> None:
        self._seen_reconnects = self.nats.reconnects
        if self.sub is not None:
            await _quietly(self.sub.unsubscribe())
        await self.nats.ensure_consumer(
            self.name,
            names.for_type(self.event_type),
            ack_wait=self.runtime.ack_wait,
            max_deliver=self.runtime.max_deliver,
            max_ack_pending=max(1000, self.limit * 4),
            inactive_threshold=BROADCAST_INACTIVE if self.broadcast else None,
        )
        self.sub = await self.nats.pull(self.name)

    async def _resubscribe(self) -> None:
        # nats.py pull subscriptions can stay dead after a server restart (nats.py #504),
        # and a server started on a fresh store has lost the stream: provision, re-bind.
        while not self.stop.is_set():
            try:
                await self.nats.provision()
                await self.subscribe()
                self.ctx.log.info("consumer re-subscribed", consumer=self.name)
                return
            except Exception as exc:
                self.ctx.log.warning("re-subscribe failed", consumer=self.name, error=repr(exc))
                with anyio.move_on_after(1.0):
                    await self.stop.wait()

    async def run(self) -> None:
        # A fixed pool of ``limit`` workers takes the fetched messages from a queue: a task
        # spawned per message cost a fifth of the runtime's time (anyio's task handles and
        # cancel scopes), a memory object stream as much again (a checkpoint per message).
        async with anyio.create_task_group() as in_flight:
            in_flight.start_soon(self._keep_alive)
            for _ in range(self.limit):
                in_flight.start_soon(self._work)
            while not self.stop.is_set():
                if self.nats.reconnects != self._seen_reconnects:
                    await self._resubscribe()
                # Fetch in batches: wait for a quarter of the batch to be free rather than
                # paying one pull request per finished message (the first 1:1 version ran
                # at a third of bare nats-py's rate).
                while self._free < self._refill:
                    self._room = anyio.Event()
                    await self._room.wait()
                wanted = min(self._free, self.fetch_batch)
                self._free -= wanted
                try:
                    batch = await self.sub.fetch(wanted, timeout=1.0)
                except TimeoutError:  # nats-py raises both its own and asyncio's: no work now
                    batch = []
                except Exception as exc:
                    batch = []
                    self.ctx.log.warning("fetch failed", consumer=self.name, error=repr(exc))
                    if not self.stop.is_set():
                        await anyio.sleep(0.2)
                        await self._resubscribe()
                self._free += wanted - len(batch)
                if batch:  # at most one message per free worker
                    self.stats.in_flight += len(batch)
                    self._queue.extend(batch)
                    self._wake_one()
            await self._drain(in_flight)
            in_flight.cancel_scope.cancel()  # stops the keep-alive loop

    async def _drain(self, in_flight: anyio.abc.TaskGroup) -> None:
        with anyio.move_on_after(self.runtime.drain_timeout) as scope:
            while self.stats.in_flight > 0:
                await anyio.sleep(0.05)
        if scope.cancelled_caught:
            # Unacked messages are redelivered to another replica after ack_wait.
            self.ctx.log.warning("drain timed out; abandoning in-flight work", in_flight=self.stats.in_flight)
            in_flight.cancel_scope.cancel()

    def _wake_one(self) -> None:
        if self._waking == 0 and self._idle:
            self._waking += 1
            self._idle.popleft().set()

    async def _work(self) -> None:
        # Workers wake one another in a chain: one that takes a message and sees more waiting
        # wakes the next before its handler runs. Handlers that wait (on a model) fan the batch
        # out over as many workers as it needs; handlers that never wait leave the batch to the
        # worker already running, instead of a wake-up per message for nothing (3-4% of the
        # runtime's time went to waking workers that found the queue empty).
        while True:
            if self._queue:
                msg = self._queue.popleft()
                if self._queue:
                    self._wake_one()
                await self.process(msg)
                continue
            wake = anyio.Event()
            self._idle.append(wake)
            await wake.wait()
            self._waking -= 1

    def _started(self, msg: Msg) -> None:  # type: ignore[override]  # this transport's messages are nats-py's
        self._working[id(msg)] = (msg, time.monotonic())  # anyio.current_time() cost 4%

    def _finished(self, msg: Delivery) -> None:
        del self._working[id(msg)]
        self.stats.in_flight -= 1
        self._free += 1
        if self._free >= self._refill and not self._room.is_set():
            self._room.set()

    async def _keep_alive(self) -> None:
        """Tell the server "still working" for every message held longer than ack_wait/3."""
        interval = max(self.runtime.ack_wait / 3, 0.05)
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            for msg, started in list(self._working.values()):
                if now - started >= interval:
                    await _quietly(msg.in_progress())


def _printable(value: str) -> str:
    return value if value.isprintable() and value.isascii() else value.encode("unicode_escape").decode()[:1024]


def _work_context(event: Event) -> dict[str, Any]:
    context: dict[str, Any] = {"run": event.run, "round": event.round}
    sample = event.work_item()
    if sample:
        context["sample"] = sample
    return context


async def _quietly(awaitable: Awaitable[Any]) -> None:
    """Acks and reports are best effort: a lost ack means a redelivery, which handlers tolerate."""
    try:
        await awaitable
    except Exception as exc:
        get_logger("looptool.runtime").debug("best-effort call failed", error=repr(exc))
