"""The bus: NATS + JetStream, provisioned idempotently, speaking msgspec events.

* one file-backed stream (:data:`looptool.names.STREAM`) holds every run's event log;
* publishes carry a ``Nats-Msg-Id`` so a retried publish is stored once;
* payloads over the server's ``max_payload`` go to the Object Store and the message carries a
  claim-check header instead (:meth:`Bus.publish` / :meth:`Bus.decode` do this transparently);
* work is pulled from durable consumers (replicas share one), whose configuration is created
  *or updated* at start-up — ``pull_subscribe`` alone silently keeps a stale config.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import anyio
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from looptool.kernel import access, names
from looptool.kernel.credentials import CredentialsError, read_credentials
from looptool.kernel.errors import LoopToolError, PermanentError, PoisonMessage
from looptool.kernel.events import ArtifactRef, Event, decode_event, encode_event, json_depth_exceeds
from looptool.kernel.logs import get_logger
from looptool.kernel.settings import NatsSettings

T = TypeVar("T")
ASYNC_ACK_TIMEOUT = 5.0  # seconds before a pipelined publish is sent again (same message id)

# Nothing answers for the stream (no leader yet): such requests are tried again (Bus._while_leaderless).
_NO_SUITABLE_PEERS = 10005  # JetStream: "no suitable peers for placement"
# A clustered leader still storing an earlier copy of this message id (a retry raced its first
# attempt): the same publish, tried again, gets the duplicate ack once that copy is stored.
_DUPLICATE_IN_PROCESS = 10158
_LEADERLESS = (
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.NoRespondersError,
    nats.errors.TimeoutError,
)


def _in_process(exc: nats.js.errors.APIError) -> bool:
    # nats-py's own subclasses (KeyNotFoundError, …) are raised without an err_code.
    return getattr(exc, "err_code", None) == _DUPLICATE_IN_PROCESS


def _retrieve_quietly(future: asyncio.Future[Any]) -> None:
    """For an ack future nobody awaits any more: retrieve its outcome, so that asyncio does not
    log "exception was never retrieved"."""
    if not future.cancelled():
        future.exception()


CLAIM_HEADER = "Looptool-Claim"
MSG_ID_HEADER = "Nats-Msg-Id"
PUBLISH_WINDOW = 1000  # acks outstanding in publish_many (below nats-py's own limit of 4000 pending)
_HEADER_ROOM = 8 * 1024  # headers and protocol overhead kept free below max_payload
_STREAM_EXISTS_WITH_OTHER_CONFIG = 10058

log = get_logger("looptool.bus")


class ArtifactCorrupted(LoopToolError, RuntimeError):
    pass


class ArtifactUnavailable(LoopToolError, RuntimeError):
    """An artifact read that did not finish in time; the work is tried again."""


def decode_bytes(data: bytes) -> Event:
    """An event from its bytes; anything else — bad JSON, an unknown type, a missing field,
    nesting deeper than the kernel allows — is a :class:`PoisonMessage`."""
    if json_depth_exceeds(data):
        raise PoisonMessage("event JSON nests too deeply")
    try:
        return decode_event(data)
    except Exception as exc:  # msgspec's errors, and whatever a pathological input provokes
        raise PoisonMessage(f"undecodable event: {exc}") from None


class Bus:
    """A connected client plus the JetStream resources LoopTool uses."""

    def __init__(self, nc: Client, settings: NatsSettings) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.settings = settings
        self._artifacts: ObjectStore | None = None
        self._state: KeyValue | None = None
        self.closing = False
        self.reconnects = 0  # bumped on every reconnect; consumers re-subscribe when it moves

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def connect(cls, settings: NatsSettings, name: str = "looptool", identity: str = access.CLI) -> Bus:
        """Connect and provision. With ``settings.credentials_dir`` the connection uses those
        credentials (and their CA) and must belong to ``identity``: a service started with
        another identity's directory is refused here rather than by a permission error later."""
        holder: dict[str, Bus] = {}

        async def on_error(exc: Exception) -> None:
            log.warning("nats error", error=repr(exc))

        async def on_disconnect() -> None:
            bus = holder.get("bus")
            if bus is None or not bus.closing:
                log.warning("nats disconnected")

        async def on_reconnect() -> None:
            bus = holder.get("bus")
            if bus is not None:
                bus.reconnects += 1
            log.info("nats reconnected")

        options: dict[str, Any] = dict(
            servers=[url.strip() for url in settings.url.split(",")],
            name=name,
            connect_timeout=settings.connect_timeout,
            max_reconnect_attempts=settings.max_reconnect_attempts,
            reconnect_time_wait=settings.reconnect_wait,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            user=settings.user,
            password=settings.password,
            token=settings.token,
            user_credentials=settings.creds_file,
            nkeys_seed=settings.nkeys_seed,
        )
        tls_ca = settings.tls_ca
        if settings.credentials_dir:
            credentials = read_credentials(settings.credentials_dir)
            if credentials.user not in (identity, access.ADMIN):
                raise CredentialsError(
                    f"{settings.credentials_dir} holds {credentials.user!r}'s credentials; {name} connects as {identity!r}"
                )
            options.update(user=credentials.user, password=credentials.password, inbox_prefix=credentials.inbox_prefix)
            tls_ca = tls_ca or credentials.ca_file
        if tls_ca or settings.tls_cert:
            context = ssl.create_default_context(cafile=tls_ca)
            if settings.tls_cert:
                context.load_cert_chain(settings.tls_cert, settings.tls_key)
            options["tls"] = context
        try:
            # nats-py retries a failing first connection without end (a max_reconnect_attempts of
            # 0 counts as unlimited too): bound it, so that a wrong URL is an error, not a hang.
            with anyio.fail_after(settings.first_connect_timeout):
                nc = await nats.connect(**options)
        except (nats.errors.NoServersError, OSError, TimeoutError) as exc:
            raise ConnectionError(f"cannot reach NATS at {settings.url}: {exc!r}") from exc
        bus = holder["bus"] = cls(nc, settings)
        await bus._provision_when_ready()
        return bus

    async def _provision_when_ready(self) -> None:
        """A cluster answers JetStream requests only once its nodes have elected a meta leader
        (seconds after they start, or after one is lost): until ``first_connect_timeout``, try again."""
        deadline = anyio.current_time() + self.settings.first_connect_timeout
        while True:
            try:
                await self._while_leaderless(self.provision, self.settings.first_connect_timeout)
                return
            except nats.js.errors.BadRequestError as exc:
                # A meta leader elected before every peer has joined cannot place replicas yet.
                if exc.err_code != _NO_SUITABLE_PEERS or anyio.current_time() > deadline:
                    await self.nc.close()
                    raise
                await anyio.sleep(0.25)
            except _LEADERLESS:
                await self.nc.close()
                raise

    async def provision(self) -> None:
        """Create (or bring up to date) the stream and the buckets. Safe to call repeatedly."""
        storage = api.StorageType.FILE if self.settings.storage == "file" else api.StorageType.MEMORY
        config = api.StreamConfig(
            name=names.STREAM,
            subjects=[names.STREAM_SUBJECTS],
            storage=storage,
            max_age=self.settings.max_age_days * 86400,
            duplicate_window=self.settings.duplicate_window,
            allow_direct=True,
            num_replicas=self.settings.replicas,
        )
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != _STREAM_EXISTS_WITH_OTHER_CONFIG:
                raise
            # Never fewer copies than the stream has: a client with the default settings must
            # not scale a cluster's replicated log down to one copy.
            existing = await self.js.stream_info(names.STREAM)
            config.num_replicas = max(existing.config.num_replicas or 1, self.settings.replicas)
            await self.js.update_stream(config)
        replicas = self.settings.replicas
        try:  # buckets are bound as they are (scaled up if asked), created only when missing
            self._artifacts = await self.js.object_store(names.ARTIFACT_BUCKET)
            await self._scale_up(f"OBJ_{names.ARTIFACT_BUCKET}")
        except nats.js.errors.BucketNotFoundError:
            self._artifacts = await self.js.create_object_store(
                names.ARTIFACT_BUCKET, storage=storage, replicas=replicas
            )
        try:
            self._state = await self.js.key_value(names.STATE_BUCKET)
            await self._scale_up(f"KV_{names.STATE_BUCKET}")
        except nats.js.errors.BucketNotFoundError:
            self._state = await self.js.create_key_value(
                bucket=names.STATE_BUCKET, history=5, storage=storage, replicas=replicas
            )

    async def _scale_up(self, stream: str) -> None:
        config = (await self.js.stream_info(stream)).config
        if (config.num_replicas or 1) < self.settings.replicas:
            config.num_replicas = self.settings.replicas
            await self.js.update_stream(config)

    async def close(self) -> None:
        """Flush what was published or acked, then close (callers drain their own work first)."""
        if self.nc.is_closed:
            return
        self.closing = True
        try:
            await self.nc.flush(timeout=2)
        except Exception as exc:  # flushing to a dead server is not worth failing a shutdown
            log.debug("flush before close failed", error=repr(exc))
        await self.nc.close()

    @property
    def max_payload(self) -> int:
        return self.nc.max_payload

    @property
    def state(self) -> KeyValue:
        assert self._state is not None, "Bus.provision() has not run"
        return self._state

    async def claim(self, key: str, owner: str) -> str:
        """Claim ``key`` for ``owner`` atomically (KV create); returns whoever holds it now —
        ``owner`` when this call (or an earlier one by the same owner) won."""
        try:
            await self._while_leaderless(lambda: self.state.create(key, owner.encode()))
            return owner
        except nats.js.errors.KeyWrongLastSequenceError:  # also when our own first attempt landed
            entry = await self._while_leaderless(lambda: self.state.get(key))
            return (entry.value or b"").decode()

    async def revision(self, key: str) -> tuple[str, int] | None:
        """``(value, revision)`` of a state key; None when there is none."""
        try:
            entry = await self._while_leaderless(lambda: self.state.get(key))
        except nats.js.errors.KeyNotFoundError:
            return None
        return (entry.value or b"").decode(), int(entry.revision or 0)

    async def take_over(self, key: str, revision: int, owner: str) -> bool:
        """Compare-and-set: ``key`` to ``owner`` if it still stands at ``revision``; False when it
        moved first (renewed, or taken by someone else)."""
        try:
            await self._while_leaderless(lambda: self.state.update(key, owner.encode(), last=revision))
            return True
        except nats.js.errors.KeyWrongLastSequenceError:
            # Someone else moved it, or our own attempt landed before a retry: the value tells.
            return await self.value(key) == owner

    async def value(self, key: str) -> str | None:
        try:
            entry = await self._while_leaderless(lambda: self.state.get(key))
        except nats.js.errors.KeyNotFoundError:
            return None
        return None if entry.value is None else entry.value.decode()

    async def put_value(self, key: str, value: str) -> None:
        await self._while_leaderless(lambda: self.state.put(key, value.encode()))

    # ------------------------------------------------------------------ publishing

    async def publish(self, event: Event, *, msg_id: str | None = None) -> api.PubAck:
        """Publish one event to its subject; returns JetStream's ack (``duplicate`` tells a repeat)."""
        return await self._publish_retrying(*await self._prepare(event, msg_id))

    async def _publish_retrying(self, subject: str, data: bytes, headers: dict[str, str]) -> api.PubAck:
        """Publish, trying again while the stream has no leader. A retry repeats the message id,
        so a first attempt that did land is stored once."""
        return await self._while_leaderless(lambda: self.js.publish(subject, data, headers=headers or None))

    async def _while_leaderless(self, request: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """A JetStream request, tried again while nothing answers for the stream (a cluster
        electing a new leader after losing a node, a server restarting), for up to ``timeout``
        (``leader_timeout`` by default), and while a leader is still storing the same message id."""
        deadline = anyio.current_time() + (self.settings.leader_timeout if timeout is None else timeout)
        while True:
            try:
                return await request()
            except _LEADERLESS:
                if anyio.current_time() > deadline:
                    raise
            except nats.js.errors.APIError as exc:
                if not _in_process(exc) or anyio.current_time() > deadline:
                    raise
            await anyio.sleep(0.25)

    async def publish_many(self, events: Iterable[Event], *, window: int = PUBLISH_WINDOW) -> list[api.PubAck]:
        """Publish many events pipelined (``publish_async``) with at most ``window`` acks
        outstanding. Unbounded, every future is held at once and the publisher runs into
        nats-py's pending limit (the bus bench died there on a slow machine with
        ``TooManyStalledMsgsError``)."""
        acks: list[api.PubAck] = []
        Message = tuple[str, bytes, dict[str, str]]
        pending: collections.deque[tuple[asyncio.Future[api.PubAck], Message, float]] = collections.deque()
        loop = asyncio.get_running_loop()

        async def settle() -> None:
            future, message, sent = pending.popleft()
            try:
                # An ack can be lost with the node that would have sent it: never wait forever.
                # Only a pending ack gets a timer: one per message cost 3/4 of the publishing rate.
                # The wait counts from the send, so a window of lost acks expires together (one
                # by one, 30 lost acks once took 150 s).
                if not future.done():
                    await asyncio.wait((future,), timeout=max(0.0, sent + ASYNC_ACK_TIMEOUT - loop.time()))
                if not future.done():
                    future.add_done_callback(_retrieve_quietly)
                    raise TimeoutError
                acks.append(future.result())
            except (TimeoutError, *_LEADERLESS):
                acks.append(await self._publish_retrying(*message))
            except nats.js.errors.APIError as exc:
                if not _in_process(exc):
                    raise
                acks.append(await self._publish_retrying(*message))

        try:
            for event in events:
                message = await self._prepare(event, None)
                subject, data, headers = message
                future = await self.js.publish_async(subject, data, headers=headers or None)
                pending.append((future, message, loop.time()))
                if len(pending) >= window:
                    await settle()
            while pending:
                await settle()
        finally:
            for future, _, _ in pending:  # abandoned by an error
                future.add_done_callback(_retrieve_quietly)
        return acks

    async def publish_raw(self, subject: str, data: bytes, msg_id: str = "") -> api.PubAck:
        """Publish an event's encoded bytes as they are (a replayed dead letter's original)."""
        headers = {MSG_ID_HEADER: names.check_header_value("message id", msg_id)} if msg_id else {}
        return await self._publish_retrying(subject, *await self._claim_checked(data, headers))

    async def _prepare(self, event: Event, msg_id: str | None) -> tuple[str, bytes, dict[str, str]]:
        subject = names.for_event(event)
        headers: dict[str, str] = {}
        key = event.dedup_key() if msg_id is None else msg_id
        if key:
            headers[MSG_ID_HEADER] = names.check_header_value("message id", key)
        return subject, *await self._claim_checked(encode_event(event), headers)

    async def _claim_checked(self, data: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        """The payload to send: ``data``, or past the server's limit a claim check for it."""
        if len(data) > self.max_payload - _HEADER_ROOM:
            ref = await self.put_artifact(names.claim_artifact(hashlib.sha256(data).hexdigest()), data)
            headers[CLAIM_HEADER] = ref.name
            data = b""
        return data, headers

    # ------------------------------------------------------------------ consuming

    async def payload(self, msg: Msg) -> bytes:
        """The message's event bytes, fetched from the Object Store for a claim check.

        Raises :class:`PoisonMessage` for a claim that names no stored object."""
        claim = (msg.headers or {}).get(CLAIM_HEADER)
        if not claim:
            return msg.data
        if not claim.startswith(names.claim_artifact("")):
            raise PoisonMessage(f"claim check {claim[:80]!r} does not name a claim object")
        try:
            return await self.get_artifact(ArtifactRef(bucket=names.ARTIFACT_BUCKET, name=claim))
        except nats.js.errors.ObjectNotFoundError:
            raise PoisonMessage(f"claim check {claim[:80]!r}: no such object") from None

    async def decode(self, msg: Msg) -> Event:
        """The message's event; :class:`PoisonMessage` for anything that is not one."""
        if not msg.headers or CLAIM_HEADER not in msg.headers:  # the common case, without an await
            return decode_bytes(msg.data)
        return decode_bytes(await self.payload(msg))

    async def ensure_consumer(
        self,
        name: str,
        filter_subject: str,
        *,
        ack_wait: float,
        max_deliver: int,
        max_ack_pending: int = 1000,
        inactive_threshold: float | None = None,
    ) -> api.ConsumerInfo:
        """Create or update a durable pull consumer so that its config is what we ask now.

        The dead-letter policy lives in the runtime (it publishes a DeadLetter and ``term``s on
        the last attempt), so the server's own max_deliver is one above it as a safety net.
        """
        config = api.ConsumerConfig(
            name=name,
            durable_name=name,
            filter_subject=filter_subject,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_deliver=max_deliver + 1,
            max_ack_pending=max_ack_pending,
            inactive_threshold=inactive_threshold,
        )
        return await self.js.add_consumer(names.STREAM, config)

    async def pull(self, consumer: str) -> JetStreamContext.PullSubscription:
        return await self.js.pull_subscribe_bind(consumer=consumer, stream=names.STREAM)

    async def read(
        self, filter_subject: str, *, follow: bool = False, idle_timeout: float = 1.0, after: int = 0
    ) -> AsyncIterator[tuple[Msg, Event | bytes]]:
        """Read the log from the start (or past stream sequence ``after``) through an ephemeral
        consumer, in stream order.

        Without ``follow`` it stops once it has delivered what matched when it began. Items
        that do not decode come back as raw bytes, so a reader never dies on a poison message.
        """
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if after else api.DeliverPolicy.ALL,
            opt_start_seq=after + 1 if after else None,
            inactive_threshold=60.0,
            mem_storage=True,
        )
        sub = await self._while_leaderless(
            lambda: self.js.pull_subscribe(filter_subject, stream=names.STREAM, config=config)
        )
        try:
            remaining = (await self._while_leaderless(sub.consumer_info)).num_pending or 0
            while follow or remaining > 0:
                try:
                    batch = await sub.fetch(256, timeout=idle_timeout)
                except TimeoutError:  # nats-py raises its own subclass and plain asyncio ones
                    continue
                for msg in batch:
                    remaining -= 1
                    try:
                        item: Event | bytes = await self.decode(msg)
                    except Exception:  # a reader never dies on a poison message
                        item = msg.data
                    yield msg, item
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may already be gone; the consumer then expires
                pass

    async def events(self, filter_subject: str) -> AsyncIterator[Event]:
        """The decodable events stored under ``filter_subject`` so far, in stream order."""
        async for _, item in self.read(filter_subject):
            if isinstance(item, Event):
                yield item

    # ------------------------------------------------------------------ artifacts

    async def put_artifact(self, name: str, data: bytes) -> ArtifactRef:
        assert self._artifacts is not None, "Bus.provision() has not run"
        artifacts = self._artifacts
        await self._while_leaderless(lambda: artifacts.put(name, data))  # a retry replaces the object whole
        return ArtifactRef(
            bucket=names.ARTIFACT_BUCKET, name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest()
        )

    async def get_artifact(self, ref: ArtifactRef) -> bytes:
        assert self._artifacts is not None, "Bus.provision() has not run"
        if ref.bucket != names.ARTIFACT_BUCKET:  # an event may point only into LoopTool's own bucket
            raise PermanentError(f"artifact {ref.bucket[:80]}/{ref.name[:80]}: not in bucket {names.ARTIFACT_BUCKET}")
        artifacts = self._artifacts

        async def read() -> ObjectStore.ObjectResult:
            with anyio.fail_after(self.settings.artifact_timeout):
                return await artifacts.get(ref.name)

        try:
            result = await self._while_leaderless(read)
        except TimeoutError:
            raise ArtifactUnavailable(
                f"artifact {ref.bucket}/{ref.name}: not read within {self.settings.artifact_timeout:.0f}s"
            ) from None
        data = result.data or b""
        if ref.sha256 and hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ArtifactCorrupted(f"artifact {ref.bucket}/{ref.name}: checksum mismatch")
        return data
