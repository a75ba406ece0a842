"""Judgement-Guided Label Verification (JGLV).

Listens to ``probe.result``; for each *failed* sample decides whether the label or the
prediction is wrong and emits one ``judge.verdict``:

* an exact or order-insensitive match of prediction and label is "both right" — no judging;
* the rules tier (schema validity, grounding) settles one-sided cases (``judge.mode`` rules or
  cascade);
* the rest go to the LLM judge: several votes, a quorum, else "unclear" (llm or cascade).

Verdict -> action: prediction wrong -> keep the label as a hard sample; label wrong -> replace
it with the prediction (which must itself pass the rules); both wrong -> discard; both right
and unclear -> as configured.
"""

from __future__ import annotations

import msgspec

from looptool.errors import PermanentError
from looptool.judging import judge_with_llm
from looptool.rules import assess, calls_equivalent, decide
from looptool.runtime import Context, Service
from looptool.schemas import Action, JudgeVerdict, Lineage, ProbeResult, Sample, ToolCall, Verdict

service = Service("judge", "Judgement-Guided Label Verification: one judge.verdict per failed probe")

ACTIONS: dict[Verdict, Action] = {"prediction_wrong": "label_ok", "label_wrong": "label_fixed", "both_wrong": "discard"}


@service.on(ProbeResult)
async def verify(ctx: Context, result: ProbeResult) -> None:
    if result.outcome != "failed":
        return  # mastered samples need no verdict
    if result.sample is None:
        raise PermanentError(f"probe.result for {result.sample_id} carries no sample")
    settings = ctx.settings.judge
    sample, prediction = result.sample, result.prediction
    parse_error = result.error if result.error_type == "parse" else None
    verdict: JudgeVerdict

    if parse_error is None and calls_equivalent(prediction, sample.label):
        verdict = _verdict(result, "both_right", "match", "The prediction equals the label up to call order; the checker was too strict.", "Keep the label.")
    elif settings.mode != "llm" and (rules := decide(sample, prediction, parse_error=parse_error, grounding=settings.grounding)).verdict:
        verdict = _verdict(result, rules.verdict, "rules", rules.analysis, rules.approach)
    elif settings.mode == "rules":
        verdict = _verdict(result, "unclear", "rules", "The rules cannot tell label and prediction apart.", "")
    else:
        llm = await judge_with_llm(ctx.client_for(ctx.settings.judge_model), settings, ctx.settings.judge_model.model, sample, prediction, result.error or "")
        verdict = _verdict(result, llm.verdict, "llm", llm.analysis, llm.approach)
        verdict.votes, verdict.llm_calls, verdict.invalid_replies = llm.votes, llm.calls, llm.invalid_replies

    if verdict.verdict == "label_wrong":
        problems = assess(prediction, sample, grounding=settings.grounding, expect_call=bool(sample.label))
        if problems or parse_error is not None:
            # A correction must itself pass the rules tier; otherwise nothing is fixed.
            verdict.verdict = "unclear"
            verdict.analysis += " The proposed correction fails the rules: " + "; ".join(p.message for p in problems)
        else:
            verdict.corrected_label = prediction
    verdict.action = _action(verdict.verdict, settings.both_right, settings.unclear)
    verdict.sample = _carried_sample(sample, verdict, result.round)
    await ctx.publish(verdict)


def _verdict(result: ProbeResult, verdict: Verdict, tier: str, analysis: str, approach: str) -> JudgeVerdict:
    return JudgeVerdict(
        run=result.run,
        round=result.round,
        sample_id=result.sample_id,
        verdict=verdict,
        action="label_ok",  # set from the final verdict below
        analysis=analysis,
        approach=approach,
        tier=tier,  # type: ignore[arg-type]
        prediction=result.prediction,
    )


def _action(verdict: Verdict, both_right: str, unclear: str) -> Action:
    if verdict == "both_right":
        return "label_ok" if both_right == "keep" else "discard"
    if verdict == "unclear":
        return "label_ok" if unclear == "keep" else "discard"
    return ACTIONS[verdict]


def _carried_sample(sample: Sample, verdict: JudgeVerdict, round: int) -> Sample:
    history = [*sample.lineage.history, f"r{round}:{verdict.verdict}->{verdict.action}"]
    if verdict.corrected_label is None:
        return msgspec.structs.replace(sample, lineage=msgspec.structs.replace(sample.lineage, history=history))
    label: list[ToolCall] = verdict.corrected_label
    lineage = Lineage(origin="correction", round=round, parent=sample.id, source=f"judge:{verdict.tier}", history=history)
    meta = {**sample.meta, "replaced_label": msgspec.to_builtins(sample.label)}
    # The id stays: a corrected sample is the same question, and the ledger counts it once.
    return msgspec.structs.replace(sample, label=label, lineage=lineage, meta=meta)
