"""Service runtime vs bare nats-py: events/s and publish->handle latency, side by side.

    .venv/bin/python bench/bus_runtime.py [--events 20000] [--rounds 9]

Both sides use the same embedded nats-server (JetStream, file storage), the same ~200-byte
msgspec events published with ``publish_async`` on a client of their own, and pull + decode +
ack. The runtime side adds what a service gets for free: a durable consumer, bounded
concurrency, a pool of workers with in-progress keep-alive, the poison checks, structured-log
context. Two modes, each side in turn in every round:

- ``live``: the consumer runs while the events are published (one process, so publishing
  shares its CPU); events/s from the first publish to the last event handled, and latency.
- ``backlog``: the events are stored first; events/s to drain them, the consumer alone.

Each result also gives the process's CPU time per event. Prints one JSON line per
measurement and the ratios (goal: runtime >= 0.9x bare events/s); ``--out`` keeps them in a
JSON file. Publishing is bounded (``Bus.publish_many``'s window) and fetch timeouts are
waited out, so a slow machine gets a slower result, not a crash.
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

MODES = ("live", "backlog")


def make_events(run: str, n: int) -> list[ProbeResult]:
    # ``ppl`` carries the send time (perf_counter) so the receiver can measure latency.
    return [ProbeResult(run=run, sample_id=f"s-{i:08d}", outcome="mastered", ppl=0.0, raw="x" * 90) for i in range(n)]


async def publish_all(bus: Bus, events: list[ProbeResult]) -> None:
    def stamped(event: ProbeResult) -> ProbeResult:
        event.ppl = time.perf_counter()  # at publish time: publish_many takes them one by one
        return event

    await bus.publish_many(stamped(event) for event in events)  # bounded in flight, as services publish


def summarise(
    kind: str, mode: str, n: int, elapsed: float, cpu: float, latencies: list[float]
) -> dict[str, float | str]:
    result: dict[str, float | str] = {
        "kind": kind,
        "mode": mode,
        "events": n,
        "events_per_s": round(n / elapsed, 1),
        "cpu_us_per_event": round(1e6 * cpu / n, 1),  # this process: both the publisher and the consumer when live
    }
    if mode == "live":  # with a backlog, the latency is only how long an event waited its turn
        latencies.sort()
        result["p50_ms"] = round(1000 * latencies[len(latencies) // 2], 2)
        result["p99_ms"] = round(1000 * latencies[int(len(latencies) * 0.99)], 2)
    return result


async def bare(url: str, n: int, mode: str) -> dict[str, float | str]:
    run = "bare" + uuid.uuid4().hex[:8]
    publisher = await Bus.connect(NatsSettings(url=url))  # as on the runtime side: a client of its own
    if mode == "backlog":
        await publish_all(publisher, make_events(run, n))
    bus = await Bus.connect(NatsSettings(url=url))
    config = api.ConsumerConfig(durable_name=f"bare-{run}", ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=20000)
    sub = await bus.js.pull_subscribe(names.run_filter(run), durable=f"bare-{run}", stream=names.STREAM, config=config)
    latencies: list[float] = []
    start, cpu = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        if mode == "live":
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
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await bus.close()
    await publisher.close()
    return summarise("bare nats-py", mode, n, elapsed, cpu, latencies)


async def runtime(url: str, n: int, mode: str) -> dict[str, float | str]:
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
    publisher = await Bus.connect(settings.nats)
    if mode == "backlog":
        await publish_all(publisher, make_events(run, n))
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        tg.start_soon(
            lambda: run_service(service, settings, replica="bench", stop=stop, ready=ready, handle_signals=False)
        )
        await ready.wait()
        start, cpu = time.perf_counter(), time.process_time()
        if mode == "live":
            tg.start_soon(publish_all, publisher, make_events(run, n))
        await done.wait()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        stop.set()
    await publisher.close()
    return summarise("looptool runtime", mode, n, elapsed, cpu, latencies)


async def purge(url: str) -> None:
    bus = await Bus.connect(NatsSettings(url=url))
    await bus.js.purge_stream(names.STREAM)
    await bus.close()


def compare(runs: dict[str, list[dict[str, float | str]]]) -> dict[str, object]:
    """Medians per side, their ratio, and the spread of the pairs' own ratios."""

    def median(side: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in runs[side])

    pairs = sorted(
        float(rt["events_per_s"]) / float(b["events_per_s"])
        for b, rt in zip(runs["bare"], runs["runtime"], strict=True)
    )
    summary: dict[str, object] = {
        "ratio_events_per_s": round(median("runtime", "events_per_s") / median("bare", "events_per_s"), 3),
        "pair_ratios_min_median_max": [round(pairs[0], 3), round(statistics.median(pairs), 3), round(pairs[-1], 3)],
        "median_events_per_s": {side: median(side, "events_per_s") for side in runs},
        "median_cpu_us_per_event": {side: median(side, "cpu_us_per_event") for side in runs},
    }
    if "p99_ms" in runs["bare"][0]:
        summary["median_p99_ms"] = {side: median(side, "p99_ms") for side in runs}
    return summary


async def main(events: int, rounds: int, out: str | None) -> None:
    configure_logging(LogSettings(level="warning"))
    encoder = msgspec.json.Encoder()
    sides = (("bare", bare), ("runtime", runtime))
    runs: dict[str, dict[str, list[dict[str, float | str]]]] = {mode: {"bare": [], "runtime": []} for mode in MODES}
    with tempfile.TemporaryDirectory() as store, NatsServer(store) as server:
        for i in range(rounds):  # interleaved, so drift on the machine hits both sides alike,
            for mode in MODES:
                for name, fn in sides if i % 2 == 0 else sides[::-1]:  # and each side goes first in turn
                    await purge(server.url)  # each side starts on an empty log
                    result = await fn(server.url, events, mode)
                    runs[mode][name].append(result)
                    print(encoder.encode(result).decode(), flush=True)
    summary = {"goal": ">= 0.9 (events/s)", **{mode: compare(runs[mode]) for mode in MODES}}
    print(encoder.encode(summary).decode())
    if out:
        command = f"python bench/bus_runtime.py --events {events} --rounds {rounds} --out {out}"
        record = {"command": command, "machine": f"{platform.machine()}, {os.cpu_count()} cores", **summary}
        Path(out).write_bytes(msgspec.json.format(encoder.encode({**record, "runs": runs})) + b"\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", help="also write the results (and this command) to a JSON file")
    args = parser.parse_args()
    anyio.run(main, args.events, args.rounds, args.out, backend="asyncio")
    sys.exit(0)
