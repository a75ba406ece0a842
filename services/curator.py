"""The curator: keeps each run's round ledger and closes rounds — the loop without a driver.

Listens to the round's events. When every sample of round r has its outcome (probed; judged if
failed; expanded if a verified failure) it assembles dataset r+1 — the paper's Eq. 5: hard and
corrected samples, their expansions, mastered samples above the perplexity cut, and (optionally)
a slice of unused seed data — writes it (Object Store + TRL-ready JSONL), and emits
``dataset.ready``; after the last round, or when evaluation stops improving, ``run.finished``.

The ledger is a fold of the event log (looptool.ledger), rebuilt from the stream when this
process meets a run it has not seen, so a restart loses nothing; a KV marker per round makes
sure a round closes once.
"""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import msgspec

from looptool import subjects
from looptool.errors import PermanentError
from looptool.formats import decode_samples, encode_samples, export_jsonl
from looptool.ledger import RunLedger
from looptool.runconfig import RunConfig
from looptool.runtime import Context, Service
from looptool.schemas import DatasetReady, EvalCompleted, Event, ExpandResult, JudgeVerdict, Lineage, ModelReady, ProbeResult, RunFinished, RunRequested, Sample

service = Service("curator", "Round ledger and round closure: dataset.ready(r+1) or run.finished")

_ledgers: dict[str, RunLedger] = {}
_locks: dict[str, anyio.Lock] = {}


@service.on(RunRequested)
async def start_run(ctx: Context, request: RunRequested) -> None:
    config = _config(request)
    if await ctx.bus.flag_set(f"started.{request.run}"):
        return
    pool = await _seed_pool(ctx, config)
    first = pool[: config.initial_size or len(pool)]
    await _publish_dataset(ctx, config, 0, first, {"fresh": len(first)})
    await ctx.bus.mark(f"started.{request.run}")


async def _track(ctx: Context, event: Event) -> None:
    ledger = await _ledger(ctx, event.run)
    ledger.apply(event)
    await _maybe_close(ctx, ledger, event.round)


for _event_type in (DatasetReady, ModelReady, ProbeResult, JudgeVerdict, ExpandResult, EvalCompleted):
    service.on(_event_type)(_track)


async def _maybe_close(ctx: Context, ledger: RunLedger, round: int) -> None:
    if ledger.request is None or ledger.finished is not None:
        return
    config = _config(ledger.request)
    current = ledger.round(round)
    waits_for_eval = config.wait_for_eval or config.patience > 0
    if not current.complete() or (waits_for_eval and ledger.overall(round) is None):
        return
    async with _locks.setdefault(ledger.run, anyio.Lock()):
        closed = f"closed.{ledger.run}.r{round}"
        if await ctx.bus.flag_set(closed):
            return
        reason = _stop_reason(ledger, config, round)
        if reason:
            await ctx.publish(RunFinished(run=ledger.run, round=round, reason=reason))
        else:
            await _next_round(ctx, ledger, config, round)
        await ctx.bus.mark(closed)


def _stop_reason(ledger: RunLedger, config: RunConfig, round: int) -> str | None:
    if round + 1 >= config.rounds:
        return f"completed {config.rounds} round(s)"
    if config.patience > 0 and round >= config.patience:
        scores = [ledger.overall(r) for r in range(round + 1)]
        best_before = max((s for s in scores[: round + 1 - config.patience] if s is not None), default=None)
        recent = [s for s in scores[round + 1 - config.patience :] if s is not None]
        if best_before is not None and recent and max(recent) <= best_before:
            return f"no eval gain for {config.patience} round(s)"
    return None


async def _next_round(ctx: Context, ledger: RunLedger, config: RunConfig, round: int) -> None:
    current = ledger.round(round)
    cut = config.ppl_cut
    outcomes = current.outcomes(cut)
    carried = current.carried(cut)
    errors = [s for s in carried if outcomes[s.id] in ("hard", "corrected")]  # the error seeds
    mastered = [s for s in carried if outcomes[s.id] == "kept"]
    seen = {s.id for s in carried}
    expanded = [s for s in current.expanded() if not (s.id in seen or seen.add(s.id))]
    if config.round_size > 0:
        # Every round has the same size (as in the paper): error seeds first, then their
        # expansions, then high-perplexity mastered samples; fresh seed data fills what is left.
        rng = random.Random(f"{config.seed}:{round}")
        budget = config.round_size
        errors = _take(errors, budget, rng)
        expanded = _take(expanded, budget - len(errors), rng)
        mastered = _take(mastered, budget - len(errors) - len(expanded), rng)
    composition = {key: value for key, value in current.composition(cut).items() if key in ("dropped", "discarded")}
    composition |= {
        "hard": sum(outcomes[s.id] == "hard" for s in errors),
        "corrected": sum(outcomes[s.id] == "corrected" for s in errors),
        "kept": len(mastered),
        "expanded": len(expanded),
    }
    fresh: list[Sample] = []
    if config.round_size > 0:
        used = sum(ledger.round(r).dataset.composition.get("fresh", 0) for r in range(round + 1) if ledger.round(r).dataset)
        pool = await _seed_pool(ctx, config)
        need = max(0, config.round_size - len(errors) - len(expanded) - len(mastered))
        fresh = [s for s in pool[used : used + need] if s.id not in seen]
    composition["fresh"] = len(fresh)
    samples = errors + expanded + mastered + [msgspec.structs.replace(s, lineage=Lineage(origin="seed", round=round + 1, source=s.lineage.source)) for s in fresh]
    ctx.log.info("round closed", closed=round, next_size=len(samples), composition=composition)
    await _publish_dataset(ctx, config, round + 1, samples, composition)


def _take(samples: list[Sample], n: int, rng: random.Random) -> list[Sample]:
    if n <= 0:
        return []
    if len(samples) <= n:
        return samples
    return [samples[i] for i in sorted(rng.sample(range(len(samples)), n))]


async def _publish_dataset(ctx: Context, config: RunConfig, round: int, samples: list[Sample], composition: dict[str, int]) -> None:
    if not samples:
        await ctx.publish(RunFinished(run=config.run, round=max(0, round - 1), reason=f"dataset for round {round} is empty"))
        return
    ref = await ctx.bus.put_artifact(f"{config.run}/r{round}/dataset.jsonl", encode_samples(samples))
    trl = Path(ctx.settings.artifact_dir) / config.run / f"r{round}" / "train.trl.jsonl"
    trl.parent.mkdir(parents=True, exist_ok=True)
    export_jsonl(samples, trl, "openai")
    await ctx.publish(DatasetReady(run=config.run, round=round, dataset=ref, size=len(samples), composition=composition))


async def _seed_pool(ctx: Context, config: RunConfig) -> list[Sample]:
    if config.seed_data is None:
        raise PermanentError(f"run {config.run}: run.requested carries no seed_data")
    samples = decode_samples(await ctx.bus.get_artifact(config.seed_data), config.seed_data.name)
    random.Random(config.seed).shuffle(samples)  # deterministic: a replayed run draws the same slices
    return samples


async def _ledger(ctx: Context, run: str) -> RunLedger:
    if run not in _ledgers:
        ledger = RunLedger(run)
        async for _, event in ctx.bus.read(subjects.run_filter(run)):
            if isinstance(event, Event):
                ledger.apply(event)
        _ledgers.setdefault(run, ledger)
    return _ledgers[run]


def _config(request: RunRequested) -> RunConfig:
    try:
        return msgspec.convert(request.config, RunConfig)
    except (msgspec.ValidationError, ValueError) as exc:
        raise PermanentError(f"run {request.run}: invalid run config: {exc}") from None
