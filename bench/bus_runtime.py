"""Service runtime vs bare nats-py: events/s and publish->handle latency, side by side.

    .venv/bin/python bench/bus_runtime.py [--events 20000] [--rounds 3]

Both sides use the same embedded nats-server (JetStream, file storage), the same ~200-byte
msgspec events published with ``publish_async``, and pull + decode + ack. The runtime side
adds what a service gets for free: a durable consumer, bounded concurrency, per-message
handler tasks with in-progress keep-alive, structured-log context. Prints one JSON line per
measurement and the ratio (goal: runtime >= 0.9x bare); ``--out`` keeps them in a JSON file.
Publishing is bounded (``Bus.publish_many``'s window) and fetch timeouts are waited out, so a
slow machine gets a slower result, not a crash.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio
import msgspec
from nats.js import api

from looptool.kernel import names
from looptool.kernel.bus import Bus
from looptool.kernel.events import decode_event
from looptool.kernel.logs import configure_logging
from looptool.kernel.nats_server import NatsServer
from looptool.kernel.runtime import Context, Service, run_service
from looptool.kernel.settings import LogSettings, NatsSettings, RuntimeSettings
from looptool.loop.events import ProbeResult
from looptool.loop.settings import Settings


def make_events(run: str, n: int) -> list[ProbeResult]:
    # ``ppl`` carries the send time (perf_counter) so the receiver can measure latency.
    return [ProbeResult(run=run, sample_id=f"s-{i:08d}", outcome="mastered", ppl=0.0, raw="x" * 90) for i in range(n)]


async def publish_all(bus: Bus, events: list[ProbeResult]) -> None:
    def stamped(event: ProbeResult) -> ProbeResult:
        event.ppl = time.perf_counter()  # at publish time: publish_many takes them one by one
        return event

    await bus.publish_many(stamped(event) for event in events)  # bounded in flight, as services publish


def summarise(kind: str, n: int, elapsed: float, latencies: list[float]) -> dict[str, float | str]:
    latencies.sort()
    return {
        "kind": kind,
        "events": n,
        "events_per_s": round(n / elapsed, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2),
    }


async def bare(url: str, n: int) -> dict[str, float | str]:
    run = "bare" + uuid.uuid4().hex[:8]
    bus = await Bus.connect(NatsSettings(url=url))
    publisher = await Bus.connect(NatsSettings(url=url))  # as on the runtime side: a client of its own
    config = api.ConsumerConfig(durable_name=f"bare-{run}", ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=20000)
    sub = await bus.js.pull_subscribe(names.run_filter(run), durable=f"bare-{run}", stream=names.STREAM, config=config)
    latencies: list[float] = []
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(publish_all, publisher, make_events(run, n))
        while len(latencies) < n:
            try:
                batch = await sub.fetch(256, timeout=1.0)
            except TimeoutError:  # nats-py's own and asyncio's: nothing arrived within the second
                continue
            for msg in batch:
                event = decode_event(msg.data)
                latencies.append(time.perf_counter() - event.ppl)
                await msg.ack()
    elapsed = time.perf_counter() - start
    await bus.close()
    await publisher.close()
    return summarise("bare nats-py", n, elapsed, latencies)


async def runtime(url: str, n: int) -> dict[str, float | str]:
    run = "rt" + uuid.uuid4().hex[:8]
    service = Service("bench" + uuid.uuid4().hex[:6])
    latencies: list[float] = []
    done = anyio.Event()

    @service.on(ProbeResult)
    async def handle(ctx: Context, event: ProbeResult) -> None:
        latencies.append(time.perf_counter() - event.ppl)
        if len(latencies) >= n:
            done.set()

    settings = Settings(
        nats=NatsSettings(url=url),
        runtime=RuntimeSettings(concurrency=256, fetch_batch=256, heartbeat_interval=5.0),
        log=LogSettings(level="warning"),
    )
    bus = await Bus.connect(settings.nats)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        tg.start_soon(
            lambda: run_service(service, settings, replica="bench", stop=stop, ready=ready, handle_signals=False)
        )
        await ready.wait()
        start = time.perf_counter()
        tg.start_soon(publish_all, bus, make_events(run, n))
        await done.wait()
        elapsed = time.perf_counter() - start
        stop.set()
    await bus.close()
    return summarise("looptool runtime", n, elapsed, latencies)


async def purge(url: str) -> None:
    bus = await Bus.connect(NatsSettings(url=url))
    await bus.js.purge_stream(names.STREAM)
    await bus.close()


async def main(events: int, rounds: int, out: str | None) -> None:
    configure_logging(LogSettings(level="warning"))
    encoder = msgspec.json.Encoder()
    with tempfile.TemporaryDirectory() as store, NatsServer(store) as server:
        results: dict[str, list[dict[str, float | str]]] = {"bare": [], "runtime": []}
        sides = (("bare", bare), ("runtime", runtime))
        for i in range(rounds):  # interleaved, so drift on the machine hits both sides alike,
            for name, fn in sides if i % 2 == 0 else sides[::-1]:  # and each side goes first in turn
                await purge(server.url)  # each side starts on an empty log
                result = await fn(server.url, events)
                results[name].append(result)
                print(encoder.encode(result).decode(), flush=True)
        best = {name: statistics.median(float(r["events_per_s"]) for r in rs) for name, rs in results.items()}
        p99 = {name: statistics.median(float(r["p99_ms"]) for r in rs) for name, rs in results.items()}
        summary = {
            "ratio_events_per_s": round(best["runtime"] / best["bare"], 3),
            "median_events_per_s": best,
            "median_p99_ms": p99,
            "goal": ">= 0.9",
        }
        print(encoder.encode(summary).decode())
        if out:
            command = f"python bench/bus_runtime.py --events {events} --rounds {rounds} --out {out}"
            record = {"command": command, "machine": f"{platform.machine()}, {os.cpu_count()} cores", **summary}
            Path(out).write_bytes(msgspec.json.format(encoder.encode({**record, "runs": results})) + b"\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also write the results (and this command) to a JSON file")
    args = parser.parse_args()
    anyio.run(main, args.events, args.rounds, args.out, backend="asyncio")
    sys.exit(0)
