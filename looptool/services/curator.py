"""The curator: keeps each run's round ledger and closes rounds — the loop without a driver.

Every curator replica folds the whole event log into its ledgers (a broadcast subscription:
a restarted replica replays the log, so nothing is lost). When every sample of round r has its
outcome — errored included — it writes dataset r+1 (:func:`looptool.loop.curation.next_round`,
the paper's Eq. 5) and emits ``dataset.ready``, or ``run.finished`` by the stop rule.

Closing a round is leased once (the kernel's ``ctx.lease``: a KV create; a standby replica takes
it over when its revision stands still for ``curator.lease`` seconds while the round stays
complete but unclosed — its holder died mid-close);
publishing is deduplicated, so a takeover never doubles a dataset. A round without progress for
``curator.stall_after`` seconds is reported as ``round.stalled`` with what it waits for.
"""

from __future__ import annotations

import anyio

from looptool.data.formats import encode_samples
from looptool.kernel.errors import PermanentError
from looptool.kernel.events import DeadLetter, Event
from looptool.kernel.runtime import Service
from looptool.loop import curation, keys
from looptool.loop.events import (
    DatasetReady,
    EvalCompleted,
    ExpandResult,
    JudgeVerdict,
    ModelReady,
    ProbeResult,
    RoundStalled,
    RunFinished,
    RunRequested,
)
from looptool.loop.ledger import RunLedger
from looptool.loop.runconfig import RunConfig
from looptool.loop.settings import LoopContext

service = Service(
    "curator",
    "Round ledger and round closure: dataset.ready(r+1) or run.finished",
    emits=(DatasetReady, RunFinished, RoundStalled),
)


class Curation:
    """This replica's ledgers (one per run) and what it saw of their progress."""

    def __init__(self, _ctx: object = None) -> None:
        self.ledgers: dict[str, RunLedger] = {}
        self.lock = anyio.Lock()
        self.last_change: dict[tuple[str, int], tuple[int, float]] = {}  # (run, round) -> (applied, since)

    def ledger(self, run: str) -> RunLedger:
        if run not in self.ledgers:
            self.ledgers[run] = RunLedger(run, release_closed_rounds=True)
        return self.ledgers[run]


@service.on(
    RunRequested,
    DatasetReady,
    ModelReady,
    ProbeResult,
    JudgeVerdict,
    ExpandResult,
    EvalCompleted,
    RunFinished,
    DeadLetter,
    broadcast=True,
)
async def track(ctx: LoopContext, event: Event) -> None:
    state = ctx.use(Curation)
    ledger = state.ledger(event.run)
    refusal = ledger.apply(event)
    if refusal is not None:  # dead-lettered with the reason; the round's counts stay true
        raise PermanentError(f"the round ledger refuses it: {refusal}")
    if isinstance(event, RunRequested):
        await start_run(ctx, ledger, event.config)
    else:
        await close_round(ctx, state, ledger, event.round)


@service.every(lambda settings: settings.curator.check_every)
async def check_rounds(ctx: LoopContext) -> None:
    """Retry closures (a standby takes over after the lease) and report stalled rounds."""
    state = ctx.use(Curation)
    for ledger in list(state.ledgers.values()):
        if ledger.request is None:
            continue
        for round in ledger.open_rounds():
            await close_round(ctx, state, ledger, round)
            await report_stall(ctx, state, ledger, round)


async def start_run(ctx: LoopContext, ledger: RunLedger, config: RunConfig) -> None:
    if ledger.round(0).dataset is not None:
        return
    if await ctx.lease(keys.run_started_key(config.run), ctx.settings.curator.lease, lambda: ledger.round(0).dataset):
        await _emit(ctx, config.run, curation.open_run(await _seed_pool(ctx, config), config))


async def close_round(ctx: LoopContext, state: Curation, ledger: RunLedger, round: int) -> None:
    if not curation.closable(ledger, round):
        return
    async with state.lock:
        key = keys.round_closed_key(ledger.run, round)
        if not await ctx.lease(key, ctx.settings.curator.lease, lambda: curation.closed(ledger, round)):
            return
        assert ledger.request is not None
        pool = await _seed_pool(ctx, ledger.request.config) if curation.needs_pool(ledger) else []
        if curation.closed(ledger, round):  # a holder this replica took over from finished meanwhile
            return
        await _emit(ctx, ledger.run, curation.close(ledger, round, pool))


async def report_stall(ctx: LoopContext, state: Curation, ledger: RunLedger, round: int) -> None:
    current = ledger.round(round)
    if current.dataset is None or current.complete():
        return
    now = anyio.current_time()
    applied, since = state.last_change.get((ledger.run, round), (-1, now))
    if applied != current.applied:
        state.last_change[(ledger.run, round)] = (current.applied, now)
        return
    idle = now - since
    if idle >= ctx.settings.curator.stall_after:
        waiting = current.missing()
        await ctx.publish(
            RoundStalled(
                run=ledger.run,
                round=round,
                waiting=waiting,
                samples=current.waiting_for(),
                idle_seconds=float(int(idle)),
                progress=current.applied,
            )
        )


async def _emit(ctx: LoopContext, run: str, decided: curation.Next | curation.Finish) -> None:
    if isinstance(decided, curation.Finish):
        await ctx.publish(RunFinished(run=run, round=decided.round, reason=decided.reason))
        return
    if decided.duplicates:
        ctx.log.warning("duplicate sample ids left out of the dataset", duplicates=decided.duplicates)
    ref = await ctx.put_artifact(keys.dataset_artifact(run, decided.round), encode_samples(decided.samples))
    ctx.log.info("dataset ready", round=decided.round, size=len(decided.samples), composition=decided.composition)
    await ctx.publish(
        DatasetReady(
            run=run,
            round=decided.round,
            dataset=ref,
            size=len(decided.samples),
            composition=decided.composition,
            sample_ids=[s.id for s in decided.samples],
        )
    )


async def _seed_pool(ctx: LoopContext, config: RunConfig) -> curation.SeedPool:
    if config.seed_data is None:
        raise PermanentError(f"run {config.run}: run.requested carries no seed_data")
    try:
        return curation.SeedPool(await ctx.get_artifact(config.seed_data), config.seed, config.seed_data.name)
    except ValueError as exc:  # a bad line never gets better
        raise PermanentError(str(exc)) from None
