"""Small helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import nats.errors
import pytest

from looptool.kernel import names
from looptool.kernel.bus import Bus
from looptool.kernel.runtime import Service, run_service
from looptool.kernel.settings import NatsSettings, RuntimeSettings
from looptool.loop.settings import Settings

# The test vLLM servers require this key, as `looptool up` makes every server do: each client
# path (OpenAI SDK, /tokenize, adapter loading) must send it or its test fails with a 401.
VLLM_API_KEY = "looptool-test-key"
REFUSED_WITHIN = 1.0  # a refused request gets no answer: it times out, and the refusal arrives


def make_settings(url: str, **runtime: object) -> Settings:
    fast = dict(ack_wait=2.0, max_deliver=3, backoff=[0.05, 0.1], heartbeat_interval=0.5, drain_timeout=5.0)
    fast.update(runtime)
    return Settings(nats=NatsSettings(url=url, reconnect_wait=0.2), runtime=RuntimeSettings(**fast))


async def read_all(bus: Bus, run: str, event_type: type) -> list:
    """Every stored event of one type in one run, in log order."""
    return [item async for _, item in bus.read(names.for_type(event_type, run)) if isinstance(item, event_type)]


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 30.0, interval: float = 0.1) -> None:
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(interval)


@asynccontextmanager
async def running(service: Service, settings: Settings, replicas: int = 1) -> AsyncIterator[list[str]]:
    """Run ``replicas`` in-process replicas of ``service`` (ready on entry, drained on exit)."""
    stop = anyio.Event()
    names = [f"{service.name}-{i}" for i in range(replicas)]
    async with anyio.create_task_group() as tg:
        for name in names:
            ready = anyio.Event()
            tg.start_soon(
                lambda n=name, r=ready: run_service(
                    service, settings, replica=n, stop=stop, ready=r, handle_signals=False
                )
            )
            await ready.wait()
        try:
            yield names
        finally:
            stop.set()


async def count(bus: Bus, run: str, event_type: type) -> int:
    return len(await read_all(bus, run, event_type))


async def assert_refused(bus: Bus, subject: str, data: bytes = b"{}") -> None:
    """The server refuses ``bus``'s publish to ``subject``: a permissions violation arrives
    and no reply does."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    bus.nc._error_cb = on_error  # noqa: SLF001 - a refusal arrives only as an async error
    with pytest.raises(nats.errors.TimeoutError):
        await bus.nc.request(subject, data, timeout=REFUSED_WITHIN)
    expected = f'permissions violation for publish to "{subject}"'.lower()
    with anyio.fail_after(10):
        while not any(expected in str(e).lower() for e in errors):
            await anyio.sleep(0.02)
