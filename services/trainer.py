"""The trainer: turns a round's dataset into a served policy.

Listens to ``dataset.ready``: trains (SFT or GRPO, LoRA) from the previous round's adapter or
the base, streaming ``train.progress``; saves the adapter under ``<artifact_dir>/<run>/r<round>``
(atomically) and to the Object Store; loads it into vLLM under ``<run>-r<round>``; emits one
``model.ready``. A redelivered round whose adapter is already complete is not trained again.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.to_thread

from looptool import subjects
from looptool.formats import decode_samples
from looptool.runtime import Context, Service
from looptool.schemas import DatasetReady, ModelReady, TrainProgress
from looptool.serving import load_adapter
from looptool.training import train_round

service = Service("trainer", "Trains each round's dataset and announces the served adapter")


def adapter_name(run: str, round: int) -> str:
    return subjects.check_token("adapter", f"{run}-r{round}")


def adapter_dir(root: str, run: str, round: int) -> Path:
    return Path(root).resolve() / subjects.check_token("run", run) / f"r{round}" / "adapter"


@service.on(DatasetReady)
async def train(ctx: Context, event: DatasetReady) -> None:
    settings = ctx.settings.trainer
    name = adapter_name(event.run, event.round)
    announced = f"announced.{event.run}.r{event.round}"
    if await ctx.bus.flag_set(announced):
        ctx.log.info("round already announced; nothing to do", adapter=name)
        return
    out = adapter_dir(ctx.settings.artifact_dir, event.run, event.round)
    tokens, seconds = 0, 0.0
    if not (out / "adapter_config.json").exists():  # a finished adapter survives a crash; a partial one never lands here
        samples = decode_samples(await ctx.bus.get_artifact(event.dataset), event.dataset.name)
        previous = adapter_dir(ctx.settings.artifact_dir, event.run, event.round - 1) if event.round > 0 and settings.continue_from_previous else None

        def report(entry: dict) -> None:  # called on the training thread
            anyio.from_thread.run(ctx.publish, TrainProgress(run=event.run, round=event.round, **entry))

        ctx.log.info("training", samples=len(samples), method=settings.method, previous=str(previous) if previous else None)
        outcome = await anyio.to_thread.run_sync(lambda: train_round(samples, settings, out, str(previous) if previous else None, report))
        ctx.log.info("trained", steps=outcome.steps, tokens_per_s=round(outcome.tokens_per_s, 1), first_loss=outcome.losses[:1], last_loss=outcome.losses[-1:])
        tokens, seconds = outcome.tokens, outcome.seconds
    archive = await ctx.bus.put_artifact(f"{event.run}/r{event.round}/adapter.tar", _tar(out))
    await load_adapter(ctx.settings.model, name, out)
    ready = ModelReady(run=event.run, round=event.round, model=name, adapter=archive, base_model=settings.base_model, dataset=event.dataset, train_tokens=tokens, train_seconds=seconds)
    await ctx.publish(ready)
    await ctx.bus.mark(announced)


def _tar(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(directory, arcname="adapter")
    return buffer.getvalue()
