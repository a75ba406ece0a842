"""The service runtime: everything a service needs that is not its method.

A service declares what it listens to::

    probe = Service("probe")

    @probe.on(ModelReady)
    async def fan_out(ctx: Context, event: ModelReady) -> None:
        ...
        await ctx.publish_many(tasks)

and :func:`run_service` does the rest: connect, one durable pull consumer per event type
(shared by all replicas), bounded concurrency, ``ack`` on success, ``nak`` with backoff on
failure, a :class:`~looptool.schemas.DeadLetter` + ``term`` after ``max_deliver`` attempts,
in-progress pings while a handler runs longer than ``ack_wait``, re-subscription after a NATS
restart, heartbeats, and a graceful drain on SIGTERM/SIGINT.

Handlers must be idempotent: a message can be delivered again after a crash. Publishing
through :class:`Context` is deduplicated by each event's ``dedup_key``.
"""

from __future__ import annotations

import os
import signal
import socket
import traceback
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import anyio
import msgspec
import structlog
from nats.aio.msg import Msg

from . import subjects
from .bus import Bus
from .errors import PermanentError
from .logs import get_logger
from .models import ModelClient
from .schemas import DeadLetter, Event, ServiceError, ServiceHeartbeat, encode_event, event_tag
from .settings import ModelSettings, Settings

E = TypeVar("E", bound=Event)
Handler = Callable[["Context", Any], Awaitable[None]]

SYSTEM_RUN = "_system"  # the run name of events that belong to no run (heartbeats)


class Service:
    """A named set of event handlers. Nothing else: no I/O happens here."""

    def __init__(self, name: str, description: str = "") -> None:
        self.name = subjects.check_token("service", name)
        self.description = description
        self.handlers: dict[type[Event], Handler] = {}

    def on(self, event_type: type[E]) -> Callable[[Callable[[Context, E], Awaitable[None]]], Callable[[Context, E], Awaitable[None]]]:
        def register(handler: Callable[[Context, E], Awaitable[None]]) -> Callable[[Context, E], Awaitable[None]]:
            if event_type in self.handlers:
                raise ValueError(f"service {self.name}: two handlers for {event_tag(event_type)}")
            self.handlers[event_type] = handler
            return handler

        return register


class Context:
    """What a handler may use: the bus, the settings, a bound logger, publishing, the model
    client (created on first use, closed with the service)."""

    def __init__(self, bus: Bus, settings: Settings, service: str, replica: str, log: Any) -> None:
        self.bus = bus
        self.settings = settings
        self.service = service
        self.replica = replica
        self.log = log
        self._clients: dict[str, ModelClient] = {}

    @property
    def models(self) -> ModelClient:
        """The policy's endpoint (``settings.model``)."""
        return self.client_for(self.settings.model)

    def client_for(self, endpoint: ModelSettings) -> ModelClient:
        """One client per endpoint (judge, generator, policy), reused across handlers."""
        key = msgspec.json.encode(endpoint).decode()
        if key not in self._clients:
            self._clients[key] = ModelClient(endpoint)
        return self._clients[key]

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()

    async def publish(self, event: Event) -> None:
        await self.bus.publish(event)

    async def publish_many(self, events: Iterable[Event]) -> None:
        await self.bus.publish_many(events)


class _Stats:
    def __init__(self) -> None:
        self.in_flight = 0
        self.handled = 0
        self.failed = 0
        self.dead = 0


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def run_service(
    service: Service,
    settings: Settings,
    *,
    replica: str | None = None,
    stop: anyio.Event | None = None,
    ready: anyio.Event | None = None,
    handle_signals: bool = True,
) -> None:
    """Run ``service`` until ``stop`` is set or SIGTERM/SIGINT arrives, then drain."""
    replica = replica or default_replica_id()
    stop = stop or anyio.Event()
    structlog.contextvars.bind_contextvars(service=service.name, replica=replica)
    log = get_logger("looptool.runtime")
    bus = await Bus.connect(settings.nats, name=f"{service.name}:{replica}")
    ctx = Context(bus, settings, service.name, replica, log)
    stats = _Stats()
    try:
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(_stop_on_signal, stop)
            tg.start_soon(_heartbeat, ctx, stats, stop)
            # Each consumer has its own slots: a consumer idling in a long-poll must not hold
            # capacity that another event type's work could use.
            consumers = [
                _Consumer(ctx, event_type, handler, anyio.Semaphore(settings.runtime.concurrency), stats, stop)
                for event_type, handler in service.handlers.items()
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
        log.info("service stopped", handled=stats.handled, failed=stats.failed, dead_lettered=stats.dead)


async def _stop_on_signal(stop: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            get_logger("looptool.runtime").info("draining", signal=signal.Signals(signum).name)
            stop.set()
            return


async def _heartbeat(ctx: Context, stats: _Stats, stop: anyio.Event) -> None:
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
            await ctx.bus.nc.publish(subjects.HEARTBEAT_SUBJECT, encode_event(beat))
        except Exception as exc:  # a disconnected client must not kill the service
            ctx.log.debug("heartbeat not sent", error=repr(exc))
        with anyio.move_on_after(ctx.settings.runtime.heartbeat_interval):
            await stop.wait()


class _Consumer:
    """Pulls one event type from its durable consumer and runs the handler on each message."""

    def __init__(self, ctx: Context, event_type: type[Event], handler: Handler, slots: anyio.Semaphore, stats: _Stats, stop: anyio.Event) -> None:
        self.ctx = ctx
        self.event_type = event_type
        self.handler = handler
        self.slots = slots
        self.stats = stats
        self.stop = stop
        self.name = subjects.consumer_name(ctx.service, event_type)
        self.runtime = ctx.settings.runtime
        self.sub: Any = None
        self._refill = max(1, min(self.runtime.fetch_batch, self.runtime.concurrency) // 4)
        self._seen_reconnects = -1
        self._working: dict[int, tuple[Msg, float]] = {}  # id(msg) -> (msg, handler start)

    async def subscribe(self) -> None:
        self._seen_reconnects = self.ctx.bus.reconnects
        if self.sub is not None:
            await _quietly(self.sub.unsubscribe())
        await self.ctx.bus.ensure_consumer(
            self.name,
            subjects.for_type(self.event_type),
            ack_wait=self.runtime.ack_wait,
            max_deliver=self.runtime.max_deliver,
            max_ack_pending=max(1000, self.runtime.concurrency * 4),
        )
        self.sub = await self.ctx.bus.pull(self.name)

    async def _resubscribe(self) -> None:
        # nats.py pull subscriptions can stay dead after a server restart (nats.py #504),
        # and a server started on a fresh store has lost the stream: provision, re-bind.
        while not self.stop.is_set():
            try:
                await self.ctx.bus.provision()
                await self.subscribe()
                self.ctx.log.info("consumer re-subscribed", consumer=self.name)
                return
            except Exception as exc:
                self.ctx.log.warning("re-subscribe failed", consumer=self.name, error=repr(exc))
                with anyio.move_on_after(1.0):
                    await self.stop.wait()

    async def run(self) -> None:
        async with anyio.create_task_group() as in_flight:
            in_flight.start_soon(self._keep_alive)
            while not self.stop.is_set():
                if self.ctx.bus.reconnects != self._seen_reconnects:
                    await self._resubscribe()
                # Fetch in batches: wait for a quarter of the batch to be free rather than
                # paying one pull request per finished message (the first 1:1 version ran
                # at a third of bare nats-py's rate).
                wanted = 0
                while wanted < self._refill:
                    await self.slots.acquire()
                    wanted += 1
                while wanted < self.runtime.fetch_batch and self.slots.value > 0:
                    self.slots.acquire_nowait()
                    wanted += 1
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
                for _ in range(wanted - len(batch)):
                    self.slots.release()
                for msg in batch:
                    self.stats.in_flight += 1
                    in_flight.start_soon(self._process, msg)
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

    async def _process(self, msg: Msg) -> None:
        # Each message runs in its own task, hence its own contextvars copy: bindings made
        # here vanish with the task and need no reset.
        self._working[id(msg)] = (msg, anyio.current_time())
        try:
            try:
                event = await self.ctx.bus.decode(msg)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                # A poison message never gets better: dead-letter it on first sight.
                structlog.contextvars.bind_contextvars(subject=msg.subject)
                await self._dead_letter(msg, f"undecodable event: {exc}")
                return
            structlog.contextvars.bind_contextvars(**_work_context(event))
            await self._handle(msg, event)
        finally:
            del self._working[id(msg)]
            self.stats.in_flight -= 1
            self.slots.release()

    async def _handle(self, msg: Msg, event: Event) -> None:
        try:
            await self.handler(self.ctx, event)
        except Exception as exc:
            meta = msg.metadata
            self.stats.failed += 1
            error = "".join(traceback.format_exception_only(exc)).strip()
            self.ctx.log.warning("handler failed", attempt=meta.num_delivered, error=error)
            await self._report_error(event, msg.subject, error)
            if meta.num_delivered >= self.runtime.max_deliver or isinstance(exc, PermanentError):
                await self._dead_letter(msg, error, run=event.run, round=event.round)
            else:
                backoff = self.runtime.backoff
                delay = backoff[min(meta.num_delivered - 1, len(backoff) - 1)] if backoff else None
                await _quietly(msg.nak(delay=delay))
            return
        self.stats.handled += 1
        await _quietly(msg.ack())

    async def _keep_alive(self) -> None:
        """Tell the server "still working" for every message held longer than ack_wait/3."""
        interval = max(self.runtime.ack_wait / 3, 0.05)
        while True:
            await anyio.sleep(interval)
            now = anyio.current_time()
            for msg, started in list(self._working.values()):
                if now - started >= interval:
                    await _quietly(msg.in_progress())

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
        await _quietly(self.ctx.bus.publish(report))

    async def _dead_letter(self, msg: Msg, error: str, run: str | None = None, round: int = 0) -> None:
        meta = msg.metadata
        run = run or _run_of(msg.subject)
        letter = DeadLetter(
            run=run,
            round=round,
            service=self.ctx.service,
            subject=msg.subject,
            stream_seq=meta.sequence.stream,
            num_delivered=meta.num_delivered,
            error=error[:4000],
            data=await self.ctx.bus.payload(msg),
            msg_id=(msg.headers or {}).get("Nats-Msg-Id", ""),
        )
        try:
            await self.ctx.bus.publish(letter)
        except Exception as exc:
            # Without a stored dead letter the message must not be dropped: leave it unacked.
            self.ctx.log.error("dead letter not stored; message left for redelivery", error=repr(exc))
            return
        self.stats.dead += 1
        self.ctx.log.error("dead-lettered", error=error)
        await _quietly(msg.term())


def _run_of(subject: str) -> str:
    parts = subject.split(".")
    return parts[1] if len(parts) > 2 else SYSTEM_RUN


def _work_context(event: Event) -> dict[str, Any]:
    context: dict[str, Any] = {"run": event.run, "round": event.round}
    sample = getattr(event, "sample_id", None) or getattr(getattr(event, "sample", None), "id", None)
    if sample:
        context["sample"] = sample
    return context


async def _quietly(awaitable: Awaitable[Any]) -> None:
    """Acks and reports are best effort: a lost ack means a redelivery, which handlers tolerate."""
    try:
        await awaitable
    except Exception as exc:
        get_logger("looptool.runtime").debug("best-effort call failed", error=repr(exc))
