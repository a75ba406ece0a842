"""Judgement-Guided Label Verification (JGLV).

Listens to ``probe.result``; for each *failed* sample decides whether the label or the
prediction is wrong and emits one ``judge.verdict``: first the tiers that need no model (an
equivalent prediction; the rules), then the LLM judge's votes. A "label wrong" verdict fixes the
label only when the prediction passes the rules; the action follows the verdict
(:mod:`looptool.loop.judging`).
"""

from __future__ import annotations

from looptool.kernel.errors import PermanentError
from looptool.kernel.runtime import Service
from looptool.llm.client import ModelClients
from looptool.loop.events import JudgeVerdict, ProbeResult
from looptool.loop.judging import action_for, carried_sample, confirm_correction, from_llm, judge_with_llm, without_llm
from looptool.loop.settings import LoopContext

service = Service(
    "judge", "Judgement-Guided Label Verification: one judge.verdict per failed probe", emits=(JudgeVerdict,)
)


@service.on(ProbeResult, once=True)
async def verify(ctx: LoopContext, result: ProbeResult) -> None:
    if result.outcome != "failed":
        return  # mastered samples need no verdict
    if result.sample is None:
        raise PermanentError(f"probe.result for {result.sample_id} carries no sample")
    settings, endpoint = ctx.settings.judge, ctx.settings.judge_model
    sample, prediction = result.sample, result.prediction
    parse_error = result.error if result.error_type == "parse" else None

    judgement = without_llm(sample, prediction, parse_error, settings)
    if judgement is None:
        client = ctx.use(ModelClients).get(endpoint)
        judgement = from_llm(
            await judge_with_llm(client, settings, endpoint.model, sample, prediction, result.error or "")
        )
    judgement = confirm_correction(judgement, sample, prediction, parse_error, settings.grounding)
    action = action_for(judgement.verdict, settings)

    await ctx.publish(
        JudgeVerdict(
            run=result.run,
            round=result.round,
            sample_id=result.sample_id,
            verdict=judgement.verdict,
            action=action,
            analysis=judgement.analysis,
            approach=judgement.approach,
            corrected_label=judgement.corrected_label,
            tier=judgement.tier,
            votes=judgement.votes,
            llm_calls=judgement.llm_calls,
            invalid_replies=judgement.invalid_replies,
            sample=carried_sample(sample, judgement, action, result.round),
            prediction=prediction,
        )
    )
