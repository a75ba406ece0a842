"""The message path's contract, on both transports: the in-memory one (:class:`StubRunner`) and
a real nats-server (:func:`run_service`). One fixture gives each test both, as anyio's tests run
on every backend: what a handler's failure, a permanent error, a poison message or a misfiled
event leads to must not depend on where the service runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
import pytest
import structlog
from helpers import make_settings, read_all, running, wait_for

from looptool.data.samples import Message, Sample
from looptool.kernel import names
from looptool.kernel.bus import Bus
from looptool.kernel.errors import PermanentError
from looptool.kernel.events import DeadLetter, Event, ServiceError, encode_event
from looptool.kernel.runtime import Context, Service
from looptool.kernel.testing import StubBus, StubRunner
from looptool.loop.events import ProbeResult, ProbeTask

contract = Service("contract")
attempts: Counter[str] = Counter()


@contract.on(ProbeTask)
async def answer(ctx: Context, task: ProbeTask) -> None:
    meta = task.sample.meta
    attempts[task.sample.id] += 1
    if meta.get("permanent"):
        raise PermanentError(f"sample {task.sample.id} can never work")
    if attempts[task.sample.id] <= int(meta.get("fail_times", 0)):
        raise RuntimeError(f"attempt {attempts[task.sample.id]} at {task.sample.id} failed")
    await ctx.publish(ProbeResult(run=task.run, sample_id=task.sample.id, outcome="mastered", ppl=1.0, raw=""))


def task(run: str, sid: str, **meta: object) -> ProbeTask:
    sample = Sample(id=sid, tools=[], messages=[Message(role="user", content=sid)], meta=dict(meta))
    return ProbeTask(run=run, sample=sample, model="m")


Publish = Callable[[Any], Awaitable[None]]  # given the transport's bus (StubBus or Bus)
Outcome = dict[str, list[Any]]  # event tag -> the run's events of that type


async def on_memory(runs: list[str], publish: Publish, settled: int) -> Outcome:
    bus = StubBus()
    runner = StubRunner(bus, make_settings("nats://unused:4222"), contract)
    await publish(bus)
    await runner.run_until_idle()
    return {
        t.__name__: [e for run in runs async for e in bus.events(names.for_type(t, run)) if isinstance(e, t)]
        for t in (ProbeResult, ServiceError, DeadLetter)
    }


async def on_nats(settings: Any, runs: list[str], publish: Publish, settled: int) -> Outcome:
    bus = await Bus.connect(settings.nats)
    try:
        async with running(contract, settings):
            await publish(bus)

            async def done() -> bool:
                ended = [e for run in runs for t in (ProbeResult, DeadLetter) for e in await read_all(bus, run, t)]
                return len(ended) >= settled

            await wait_for(done)
            await anyio.sleep(0.3)  # a stray retry or duplicate would show itself now
        return {
            t.__name__: [e for run in runs for e in await read_all(bus, run, t)]
            for t in (ProbeResult, ServiceError, DeadLetter)
        }
    finally:
        await bus.close()


@pytest.fixture(params=["memory", "nats"])
def deliver(request: pytest.FixtureRequest) -> Callable[[list[str], Publish, int], Outcome]:
    """Runs the contract service on one transport: publish, wait until ``settled`` messages
    ended (a result or a dead letter), return the runs' events by type."""
    if request.param == "memory":
        return lambda run, publish, settled: anyio.run(on_memory, run, publish, settled)
    settings = make_settings(request.getfixturevalue("nats_server").url)
    return lambda run, publish, settled: anyio.run(on_nats, settings, run, publish, settled)


def publishing(*events: Event) -> Publish:
    async def publish(bus: Any) -> None:
        for event in events:
            await bus.publish(event)

    return publish


def test_a_failing_handler_is_reported_and_retried_until_it_succeeds(deliver: Any, run_id: str) -> None:
    attempts.clear()
    out = deliver([run_id], publishing(task(run_id, "flaky", fail_times=2), task(run_id, "fine")), 2)
    assert sorted(r.sample_id for r in out["ProbeResult"]) == ["fine", "flaky"]
    assert [e.sample_id for e in out["ServiceError"]] == ["flaky", "flaky"]
    assert out["ServiceError"][0].error == "RuntimeError: attempt 1 at flaky failed"
    assert out["DeadLetter"] == [] and attempts["flaky"] == 3


def test_a_permanent_error_is_dead_lettered_at_once(deliver: Any, run_id: str) -> None:
    attempts.clear()
    out = deliver([run_id], publishing(task(run_id, "doomed", permanent=True)), 1)
    (letter,) = out["DeadLetter"]
    assert (letter.sample_id, letter.stage, letter.num_delivered) == ("doomed", "probe.task", 1)
    assert letter.error == "PermanentError: sample doomed can never work" and letter.service == "contract"
    assert msgspec.json.decode(letter.data)["sample"]["id"] == "doomed"  # the original, to replay
    assert len(out["ServiceError"]) == 1 and attempts["doomed"] == 1


def test_work_that_keeps_failing_is_dead_lettered_after_max_deliver(deliver: Any, run_id: str) -> None:
    attempts.clear()
    out = deliver([run_id], publishing(task(run_id, "broken", fail_times=99)), 1)
    (letter,) = out["DeadLetter"]
    assert letter.num_delivered == 3 and attempts["broken"] == 3  # make_settings: max_deliver=3
    assert [e.error for e in out["ServiceError"]] == [f"RuntimeError: attempt {i} at broken failed" for i in (1, 2, 3)]


def test_poison_and_misfiled_messages_are_dead_lettered_unhandled(deliver: Any, run_id: str) -> None:
    attempts.clear()
    other = run_id + "x"
    misfiled = task(run_id, "elsewhere")
    wrong_type = ProbeResult(run=run_id, sample_id="r", outcome="mastered", ppl=1.0, raw="")

    async def publish(bus: Any) -> None:
        subject = names.for_event(task(run_id, "any"))
        await bus.publish_raw(subject, b'{"not": "an event"')
        await bus.publish_raw(names.for_event(task(other, "elsewhere")), encode_event(misfiled))
        await bus.publish_raw(subject, encode_event(wrong_type))
        await bus.publish(task(run_id, "good"))

    out = deliver([run_id, other], publish, 4)
    assert [r.sample_id for r in out["ProbeResult"]] == ["good"] and set(attempts) == {"good"}
    undecodable, misfiled_letter, wrong_type_letter = sorted(out["DeadLetter"], key=lambda d: d.stream_seq)
    assert undecodable.error.startswith("undecodable event") and undecodable.data == b'{"not": "an event"'
    assert undecodable.stage == "" and undecodable.sample_id is None
    assert misfiled_letter.error.startswith(f"a probe.task event of run {run_id!r} published on ")
    assert misfiled_letter.run == other  # the subject's run: the event's own claim is not believed
    assert wrong_type_letter.error == "a probe.result event on ProbeTask's subject"
    assert out["ServiceError"] == []  # no handler ran, so nothing to report


def test_gather_returns_every_part_to_the_last_one_in() -> None:
    async def main() -> list[list[str] | None]:
        ctx = Context(StubBus(), make_settings("nats://unused:4222"), "contract", "contract-0", structlog.get_logger())
        seen = [await ctx.gather("evaluated.r.m", part, 3, f"part {part}") for part in (2, 0)]
        seen.append(await ctx.gather("evaluated.r.m", 2, 3, "part 2"))  # a redelivered part: still waiting
        seen.append(await ctx.gather("evaluated.r.m", 1, 3, "part 1"))
        assert await ctx.part("evaluated.r.m", 1) == "part 1" and await ctx.part("evaluated.r.x", 1) is None
        return seen

    assert anyio.run(main) == [None, None, None, ["part 0", "part 1", "part 2"]]


@pytest.fixture(params=["memory", "nats"])
def two_replicas(request: pytest.FixtureRequest) -> Any:
    """Two contexts of one service on one bus (in memory, or a real nats-server's state bucket)."""
    settings = make_settings(request.getfixturevalue("nats_server").url) if request.param == "nats" else None

    async def make() -> tuple[Any, Context[Any], Context[Any]]:
        bus: Any = StubBus() if settings is None else await Bus.connect(settings.nats)
        log = structlog.get_logger()
        return bus, Context(bus, settings, "curator", "a", log), Context(bus, settings, "curator", "b", log)

    return make


def test_a_lease_is_taken_over_only_when_its_revision_stands_still(two_replicas: Any, run_id: str) -> None:
    key = f"closed.{run_id}.r0"

    async def main() -> None:
        bus, a, b = await two_replicas()
        try:
            assert await a.lease(key, 60) and await a.lease(key, 60)  # a holds it, again on a redelivery
            assert not await b.lease(key, 0.2)  # held: b starts watching its revision
            await anyio.sleep(0.3)
            assert not await b.lease(key, 0.2, finished=lambda: True)  # finished meanwhile: nothing to take
            assert await a.renew(key)  # the holder shows itself alive: the revision moves
            assert not await b.lease(key, 0.2)
            await anyio.sleep(0.3)
            assert await b.lease(key, 0.2)  # stood still for the ttl: b takes it over
            assert await a.holder(key) == "b" and not await a.renew(key) and await b.renew(key)
        finally:
            if not isinstance(bus, StubBus):
                await bus.close()

    anyio.run(main)
