"""The evaluator: scores every round's model on held-out BFCL-format sets.

Listens to ``model.ready``; at round 0 it also scores the base model, the loop's starting point.
Emits ``eval.completed`` with accuracy per category and overall, and keeps the per-item
results (id, valid, error type, error) in the Object Store for inspection. At round 0 it checks
the run's training data against the eval sets (``looptool lint``'s contamination test) and
reports the overlapping samples with the scores.
"""

from __future__ import annotations

import msgspec

from looptool.data.lint import Contamination, contamination
from looptool.data.samples import Sample
from looptool.kernel import names
from looptool.kernel.errors import PermanentError
from looptool.kernel.runtime import Context, Service
from looptool.llm.client import ModelClients
from looptool.loop.evaluation import EvalSetError, evaluate, load_eval_sets, metrics
from looptool.loop.events import EvalCompleted, ModelReady

service = Service("evaluator", "Held-out evaluation of every round's model", emits=(EvalCompleted,))
_encoder = msgspec.json.Encoder()


@service.on(ModelReady)
async def evaluate_round(ctx: Context, event: ModelReady) -> None:
    settings = ctx.settings.evaluator
    try:
        samples = load_eval_sets(settings.sets)
    except (EvalSetError, FileNotFoundError, ModuleNotFoundError) as exc:
        raise PermanentError(str(exc)) from None
    if not samples:
        ctx.log.warning("no evaluation sets configured (evaluator.sets)")
        return
    overlap = Contamination()
    if event.round == 0 and event.dataset is not None:  # the run's training data, checked once
        overlap = contamination(await ctx.load(event.dataset, Sample), {"evaluator.sets": samples})
        if overlap.contaminated:
            ctx.log.warning(
                "training data overlaps the eval sets", samples=overlap.contaminated, first=overlap.contaminated_ids[:5]
            )
    models = [event.model]
    if event.round == 0 and settings.evaluate_base and event.base_model:
        models.insert(0, ctx.settings.model.model)
    policy = ctx.use(ModelClients).get(ctx.settings.model)
    for model in models:
        done = names.evaluated_key(event.run, event.round, model)
        if await ctx.holder(done) is not None:  # a redelivery after the result was published
            continue
        items = await evaluate(policy, model, samples, settings.max_tokens)
        details = await ctx.put_artifact(
            names.eval_artifact(event.run, event.round, model), b"".join(_encoder.encode(i) + b"\n" for i in items)
        )
        scores = metrics(items)
        await ctx.publish(
            EvalCompleted(
                run=event.run,
                round=event.round,
                model=model,
                metrics=scores,
                n_items=len(items),
                details=details,
                eval_set=",".join(settings.sets),
                contaminated=overlap.contaminated,
                contaminated_ids=overlap.contaminated_ids[:50],
            )
        )
        await ctx.mark(done)
        ctx.log.info("evaluated", model=model, overall=round(scores["overall"], 4), items=len(items))
