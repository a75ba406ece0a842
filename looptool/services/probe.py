"""Greedy Capability Probing (GCP).

Listens to ``model.ready``: fans the round's dataset out as one ``probe.task`` per sample, which
every probe replica pulls. For each task: decode greedily with the new policy, check the
prediction against the label with the AST checker, score its perplexity, and emit one
``probe.result`` — *mastered* when the prediction passes, *failed* otherwise (an unparseable
reply is a failure of type ``parse``).
"""

from __future__ import annotations

from looptool.data.checker import check_sample
from looptool.data.samples import Sample
from looptool.kernel.errors import PermanentError
from looptool.kernel.runtime import Service
from looptool.llm.client import ModelClients, perplexity
from looptool.loop.events import ModelReady, ProbeResult, ProbeTask
from looptool.loop.settings import LoopContext

service = Service(
    "probe",
    "Greedy Capability Probing: one probe.result per sample of the round",
    emits=(ProbeTask, ProbeResult),
)


@service.on(ModelReady)
async def fan_out(ctx: LoopContext, event: ModelReady) -> None:
    if event.dataset is None:
        ctx.log.warning("model.ready without a dataset: nothing to probe", model=event.model)
        return
    samples = await ctx.load(event.dataset, Sample)
    # Deduplicated per sample: re-running this handler after a crash publishes nothing twice.
    await ctx.publish_many(
        ProbeTask(run=event.run, round=event.round, sample=sample, model=event.model) for sample in samples
    )
    ctx.log.info("probe tasks published", samples=len(samples), model=event.model)


@service.on(ProbeTask, once=True)
async def probe(ctx: LoopContext, task: ProbeTask) -> None:
    settings = ctx.settings.probe
    policy = ctx.use(ModelClients).get(ctx.settings.model)
    prediction = await policy.predict(
        task.sample, task.model, max_tokens=settings.max_tokens, seed=settings.seed, extra_body=settings.extra_body
    )
    error_type: str | None
    error: str | None
    if prediction.error_type is not None:
        mastered, error_type, error = False, prediction.error_type, prediction.error
    else:
        try:
            verdict = check_sample(task.sample, prediction.calls)
        except Exception as exc:  # the same sample fails the same way on every retry
            raise PermanentError(f"checker failed on {task.sample.id}: {exc!r}") from exc
        mastered, error_type, error = verdict.valid, verdict.error_type or None, verdict.error or None
    if settings.ppl == "label":
        ppl = perplexity(await policy.label_logprobs(task.sample, task.model))
    else:
        ppl = perplexity(prediction.token_logprobs)  # free: the greedy decode's own log-probs
    await ctx.publish(
        ProbeResult(
            run=task.run,
            round=task.round,
            sample_id=task.sample.id,
            outcome="mastered" if mastered else "failed",
            ppl=ppl,
            prediction=prediction.calls,
            raw=prediction.raw,
            error_type=error_type,
            error=error,
            reasoning=prediction.reasoning,
            sample=task.sample,
        )
    )
