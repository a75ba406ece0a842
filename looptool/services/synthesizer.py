"""Seed data from a team's own tools, on the bus: a synthesis job's attempts shared by replicas.

Listens to ``synthesis.requested``: fans the job out as one ``synthesis.task`` per attempt, which
every replica pulls. A task is one attempt — the role-play, then the format, execution and
semantic stages (:func:`looptool.loop.synthesis.attempt`) — and ends in one ``synthesis.result``.
Every replica folds the jobs' results, and the dead letters of attempts that failed for good
(their outcome: stage ``error``); once every attempt of a job has its outcome, one replica (a
lease) settles it — de-duplication and contamination over all attempts in attempt order
(:func:`~looptool.loop.synthesis.settle`) — stores the seed pool and emits ``synthesis.finished``.

Calls run where the job says only if this service's settings allow it
(``synthesis.allow_execution``): a request may name any command line. Each attempt opens its own
session with the tools (a fresh MCP session; stateful tools see one conversation each).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import msgspec

from looptool.data.formats import encode_jsonl, encode_samples
from looptool.data.samples import ToolSpec
from looptool.data.toolsources import McpTools, OpenApiTools, Operation
from looptool.kernel.events import DeadLetter, Event
from looptool.kernel.runtime import Service
from looptool.llm.client import ModelClients
from looptool.loop import keys, synthesis
from looptool.loop.events import (
    SynthesisFinished,
    SynthesisJob,
    SynthesisRequested,
    SynthesisResult,
    SynthesisTask,
)
from looptool.loop.settings import LoopContext

service = Service(
    synthesis.SERVICE,
    "Seed data from tools: one synthesis.result per attempt, synthesis.finished per job",
    emits=(SynthesisTask, SynthesisResult, SynthesisFinished),
    check=lambda settings: synthesis.check_settings(settings.synthesis),
)


@service.on(SynthesisRequested)
async def fan_out(ctx: LoopContext, event: SynthesisRequested) -> None:
    # Deduplicated per attempt: re-running this handler after a crash publishes nothing twice.
    await ctx.publish_many(
        SynthesisTask(run=event.run, job=event.job, attempt=index) for index in range(event.job.count)
    )
    ctx.log.info("synthesis tasks published", attempts=event.job.count, source=event.job.source)


@service.on(SynthesisTask, once=True)
async def attempt(ctx: LoopContext, task: SynthesisTask) -> None:
    settings = ctx.settings
    config = msgspec.structs.replace(settings.synthesis, count=task.job.count, seed=task.job.seed)
    clients = ctx.use(ModelClients)
    judge = (
        synthesis.Judge(clients.get(settings.judge_model), settings.judge_model.model, settings.judge)
        if config.semantics
        else None
    )
    tools = await ctx.load(task.job.tools, ToolSpec)
    async with _calls(ctx, task.job) as execute:
        outcome = await synthesis.attempt(
            task.attempt,
            tools,
            clients.get(settings.generator_model),
            settings.generator_model.model,
            config,
            task.job.source,
            execute,
            judge,
        )
    await ctx.publish(SynthesisResult(run=task.run, count=task.job.count, outcome=outcome))


class Jobs:
    """This replica's ledgers, one per job."""

    def __init__(self, _ctx: object = None) -> None:
        self.ledgers: dict[str, synthesis.JobLedger] = {}
        self.lock = anyio.Lock()

    def ledger(self, job: str) -> synthesis.JobLedger:
        if job not in self.ledgers:
            self.ledgers[job] = synthesis.JobLedger(job)
        return self.ledgers[job]


@service.on(SynthesisResult, SynthesisFinished, DeadLetter, broadcast=True)
async def track(ctx: LoopContext, event: Event) -> None:
    if isinstance(event, DeadLetter) and not synthesis.settles_attempt(event):
        return  # another service's, or this one's about a job's bookkeeping
    ledger = ctx.use(Jobs).ledger(event.run)
    ledger.apply(event)
    await settle(ctx, ledger)


@service.every(lambda settings: settings.curator.check_every)
async def check_jobs(ctx: LoopContext) -> None:
    """Settle what a replica that died mid-settle left (a standby takes over after the lease)."""
    for ledger in list(ctx.use(Jobs).ledgers.values()):
        await settle(ctx, ledger)


async def settle(ctx: LoopContext, ledger: synthesis.JobLedger) -> None:
    if not ledger.complete():
        return
    async with ctx.use(Jobs).lock:
        key = keys.synthesis_settled_key(ledger.job)
        if not await ctx.lease(key, ctx.settings.curator.lease, lambda: ledger.finished):
            return
        evals = synthesis.decontamination_sets(ctx.settings)
        outcomes = list(ledger.outcomes.values())
        result = synthesis.settle(outcomes, ledger.count or 0, ctx.settings.synthesis.near_duplicate, evals)
        if not ledger.complete():  # a holder this replica took over from finished meanwhile
            return
        job = ledger.job
        pool = await ctx.put_artifact(keys.synthesis_artifact(job, "pool"), encode_samples(result.samples))
        rejects = await ctx.put_artifact(keys.synthesis_artifact(job, "rejects"), encode_jsonl(result.rejects))
        await ctx.publish(
            SynthesisFinished(
                run=job,
                pool=pool,
                rejects=rejects,
                kept=len(result.samples),
                attempted=result.attempted,
                rejected=result.rejected,
            )
        )
        ctx.log.info("synthesis settled", job=job, summary=result.summary())


@asynccontextmanager
async def _calls(ctx: LoopContext, job: SynthesisJob) -> AsyncIterator[synthesis.Executor | None]:
    """What runs this attempt's calls: the job's MCP server or API where this service's settings
    allow it, else nothing (no execution stage)."""
    if not job.execute or job.execute not in ctx.settings.synthesis.allow_execution:
        yield None
        return
    kind, _, where = job.execute.partition(":")
    if kind == "mcp":
        async with McpTools(where) as server:
            yield server.call
    elif kind == "openapi" and job.operations is not None:
        async with OpenApiTools(await ctx.load(job.operations, Operation), where) as api:
            yield api.call
    else:
        yield None
