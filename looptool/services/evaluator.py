"""The evaluator: scores every round's model on held-out benchmark sets.

Listens to ``model.ready``; at round 0 it also scores the base model, the loop's starting point,
and checks the run's training data against the eval sets (``looptool lint``'s contamination
test). It splits each evaluation into ``evaluator.shards`` parts (``eval.shard``) that any
evaluator replica scores — BFCL's multi-turn rollouts are long, so replicas share them. The
replica that scores the last part publishes ``eval.completed``: accuracy per category, overall,
and each benchmark's own summary (BFCL's overall, ACEBench's summary), with the per-item results
(id, valid, error type, error) in the Object Store.
"""

from __future__ import annotations

import uuid

import msgspec

from looptool.data.formats import encode_jsonl
from looptool.data.lint import Contamination, contamination
from looptool.data.samples import Sample
from looptool.data.scoring import ScoredItem
from looptool.kernel.errors import PermanentError
from looptool.kernel.events import ArtifactRef
from looptool.kernel.runtime import Service
from looptool.llm.client import ModelClients
from looptool.loop import keys, tracking
from looptool.loop.acebench_agent import EndpointUser, needs_user
from looptool.loop.evaluation import EvalItem, EvalSetError, evaluate, load_eval_sets, metrics, single_turn
from looptool.loop.events import EvalCompleted, EvalShard, ModelReady
from looptool.loop.settings import LoopContext

service = Service(
    "evaluator",
    "Held-out evaluation of every round's model",
    emits=(EvalShard, EvalCompleted),
    check=lambda settings: tracking.check_tracking(settings.tracking),
)
_encoder = msgspec.json.Encoder()


def _load_items(ctx: LoopContext) -> list[EvalItem]:
    try:
        items = load_eval_sets(ctx.settings.evaluator.sets)
    except (EvalSetError, FileNotFoundError, ModuleNotFoundError) as exc:
        raise PermanentError(str(exc)) from None
    if ctx.settings.evaluator.user_simulator is None and any(needs_user(item) for item in items):
        raise PermanentError("evaluator.sets has ACEBench agent_multi_turn tasks: set evaluator.user_simulator")
    return items


def _user(ctx: LoopContext) -> EndpointUser | None:
    endpoint = ctx.settings.evaluator.user_simulator
    if endpoint is None:
        return None
    return EndpointUser(ctx.use(ModelClients).get(endpoint), endpoint.model, ctx.settings.evaluator.max_tokens)


def _eval_items(ctx: LoopContext) -> list[EvalItem]:
    """The eval sets, loaded once per process: every shard of every round reads the same list."""
    return ctx.use(_load_items)


@service.on(ModelReady)
async def split(ctx: LoopContext, event: ModelReady) -> None:
    settings = ctx.settings.evaluator
    items = _eval_items(ctx)
    if not items:
        ctx.log.warning("no evaluation sets configured (evaluator.sets)")
        return
    overlap = Contamination()
    if event.round == 0 and event.dataset is not None:  # the run's training data, checked once
        overlap = contamination(await ctx.load(event.dataset, Sample), {"evaluator.sets": single_turn(items)})
        if overlap.contaminated:
            ctx.log.warning(
                "training data overlaps the eval sets", samples=overlap.contaminated, first=overlap.contaminated_ids[:5]
            )
    models = [event.model]
    if event.round == 0 and settings.evaluate_base and event.base_model:
        models.insert(0, ctx.settings.model.model)
    shards = max(1, min(settings.shards, len(items)))
    await ctx.publish_many(
        EvalShard(
            run=event.run,
            round=event.round,
            model=model,
            shard=shard,
            shards=shards,
            contaminated=overlap.contaminated,
            contaminated_ids=overlap.contaminated_ids[:50],
        )
        for model in models
        for shard in range(shards)
    )


@service.on(EvalShard, once=True)
async def score_shard(ctx: LoopContext, event: EvalShard) -> None:
    evaluated = keys.evaluated_key(event.run, event.round, event.model)
    part = await ctx.part(evaluated, event.shard)  # set: a redelivery of a shard already scored
    if part is None:
        items = _eval_items(ctx)[event.shard :: event.shards]
        policy = ctx.use(ModelClients).get(ctx.settings.model)
        scored = await evaluate(policy, event.model, items, ctx.settings.evaluator.max_tokens, _user(ctx))
        ref = await ctx.put_artifact(
            keys.eval_artifact(event.run, event.round, event.model, event.shard), encode_jsonl(scored)
        )
        ctx.log.info("eval shard scored", model=event.model, shard=event.shard, items=len(scored))
        part = _encoder.encode(ref).decode()
    parts = await ctx.gather(evaluated, event.shard, event.shards, part)
    if parts is not None and await ctx.holder(evaluated) is None:  # the last shard in publishes
        await _complete(ctx, event, parts)


async def _complete(ctx: LoopContext, event: EvalShard, parts: list[str]) -> None:
    """The round's result from every shard's items; two replicas finishing together both
    publish it, which JetStream's deduplication stores once."""
    evaluated = keys.evaluated_key(event.run, event.round, event.model)
    items: list[ScoredItem] = []
    for part in parts:
        items += await ctx.load(msgspec.json.decode(part, type=ArtifactRef), ScoredItem)
    details = await ctx.put_artifact(keys.eval_artifact(event.run, event.round, event.model), encode_jsonl(items))
    scores = metrics(items)
    await ctx.publish(
        EvalCompleted(
            run=event.run,
            round=event.round,
            model=event.model,
            metrics=scores,
            n_items=len(items),
            details=details,
            eval_set=",".join(ctx.settings.evaluator.sets),
            contaminated=event.contaminated,
            contaminated_ids=event.contaminated_ids,
        )
    )
    await ctx.mark(evaluated)
    ctx.log.info("evaluated", model=event.model, overall=round(scores["overall"], 4), items=len(items))
    # Shards finishing together (in any replica, or one delivered twice) all get here; the scores
    # are written once, by the one call that claims it (an owner no other call has). Best effort:
    # a replica killed between the claim and the write leaves them out of the tracker.
    tracked = keys.tracked_key(event.run, event.round, event.model)
    if tracking.TENSORBOARD in ctx.settings.tracking.report_to and await ctx.claim(tracked, owner=uuid.uuid4().hex):
        directory = tracking.logs_dir(ctx.settings.tracking, ctx.settings.artifact_dir, event.run)
        base = event.model == ctx.settings.model.model  # the base model, scored at round 0
        try:  # the tracker is a view: a write that fails never fails the evaluation (it is logged)
            tracking.log_scores(directory, event.round, scores, base=base)
        except OSError as exc:
            ctx.log.warning("scores not written to the tracker", directory=str(directory), error=repr(exc))
