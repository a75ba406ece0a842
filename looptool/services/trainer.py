"""The trainer: turns a round's dataset into a served policy.

Listens to ``dataset.ready``: trains (SFT or GRPO, LoRA) from the previous round's adapter or
the base, streaming ``train.progress``; saves the adapter under ``<artifact_dir>/<run>/r<round>``
(atomically, the round's data beside it as TRL-ready JSONL) and to the Object Store; loads it
into vLLM under ``<run>-r<round>``; emits one ``model.ready``. A replica trains one round at a
time; a redelivered round whose adapter is already complete is not trained again, and an
announced round is not announced twice.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

from looptool.data.formats import export_jsonl
from looptool.data.samples import Sample
from looptool.kernel.runtime import Service
from looptool.llm.client import ModelSettings
from looptool.llm.serving import load_adapter
from looptool.loop import keys, tracking
from looptool.loop.events import DatasetReady, ModelReady, TrainProgress
from looptool.loop.settings import LoopContext, Settings
from looptool.loop.training import check_trainer_settings, train_round


class Backend:
    """What a round takes outside the bus: training on this machine (TRL, :func:`train_round`)
    and serving the adapter (vLLM's runtime LoRA loading). A test gives its own through
    ``StubRunner(..., resources={Backend: ...})``."""

    def __init__(self, ctx: LoopContext | None = None) -> None:
        pass

    train = staticmethod(train_round)

    async def serve(self, endpoint: ModelSettings, name: str, adapter: Path) -> None:
        await load_adapter(endpoint, name, adapter)


def _check(settings: Settings) -> None:
    check_trainer_settings(settings.trainer)
    tracking.check_tracking(settings.tracking)


service = Service(
    "trainer",
    "Trains each round's dataset and announces the served adapter",
    emits=(TrainProgress, ModelReady),
    check=_check,
)


@service.on(DatasetReady, concurrency=1)  # one round at a time: training takes the whole device
async def train(ctx: LoopContext, event: DatasetReady) -> None:
    settings = ctx.settings.trainer
    name = keys.adapter_name(event.run, event.round)
    announced = keys.round_announced_key(event.run, event.round)
    if await ctx.holder(announced) is not None:
        ctx.log.info("round already announced; nothing to do", adapter=name)
        return
    out = keys.adapter_dir(ctx.settings.artifact_dir, event.run, event.round)
    tokens, seconds = 0, 0.0
    if not (
        out / "adapter_config.json"
    ).exists():  # a finished adapter survives a crash; a partial one never lands here
        samples = await ctx.load(event.dataset, Sample)
        trained_on = keys.training_file(ctx.settings.artifact_dir, event.run, event.round)
        trained_on.parent.mkdir(parents=True, exist_ok=True)
        export_jsonl(samples, trained_on, "openai")  # beside the adapter, for training elsewhere
        previous = (
            keys.adapter_dir(ctx.settings.artifact_dir, event.run, event.round - 1)
            if event.round > 0 and settings.continue_from_previous
            else None
        )

        def report(entry: dict[str, Any]) -> None:  # called on the training thread
            anyio.from_thread.run(ctx.publish, TrainProgress(run=event.run, round=event.round, **entry))

        ctx.log.info(
            "training", samples=len(samples), method=settings.method, previous=str(previous) if previous else None
        )
        backend = ctx.use(Backend)
        outcome = await anyio.to_thread.run_sync(
            lambda: backend.train(
                samples,
                settings,
                out,
                str(previous) if previous else None,
                report,
                template_kwargs=ctx.settings.model.chat_template_kwargs,
                tracking=tracking.for_round(ctx.settings.tracking, ctx.settings.artifact_dir, event.run, event.round),
            )
        )
        ctx.log.info(
            "trained",
            skipped=outcome.skipped,
            steps=outcome.steps,
            tokens_per_s=round(outcome.tokens_per_s, 1),
            first_loss=outcome.losses[:1],
            last_loss=outcome.losses[-1:],
        )
        tokens, seconds = outcome.tokens, outcome.seconds
    archive = await ctx.put_artifact(keys.adapter_artifact(event.run, event.round), _tar(out))
    await ctx.use(Backend).serve(ctx.settings.model, name, out)
    ready = ModelReady(
        run=event.run,
        round=event.round,
        model=name,
        adapter=archive,
        base_model=settings.base_model,
        dataset=event.dataset,
        train_tokens=tokens,
        train_seconds=seconds,
    )
    await ctx.publish(ready)  # deduplicated: a replica that raced this one stores nothing twice
    await ctx.mark(announced, ctx.replica)


def _tar(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(directory, arcname="adapter")
    return buffer.getvalue()
