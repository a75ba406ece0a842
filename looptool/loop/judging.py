"""The LLM tier of label verification: prompt, structured reply, votes and quorum.

Prompts are versioned template files (``looptool/prompts/<name>.md``). Sample data enters the
prompt only as one JSON document inside ``<data>…</data>`` (strings JSON-escaped, any
``</data`` inside neutralised), and the instructions say that data is never instructions —
text in a sample cannot close the block or pose as the prompt.

Votes: ``votes`` calls, cycling through the judge models (one model is sampled repeatedly at
``temperature``, so a single judge model can still reach a 2-of-3 majority — the reference
implementation's default setup never could). A reply that does not fit the schema is retried
``reply_retries`` times; after that it is a missing vote, kept raw for audit.
"""

from __future__ import annotations

import importlib.resources
import string
from collections import Counter
from functools import cache
from typing import Any

import msgspec

from looptool.data.calls import without_lone_surrogates
from looptool.data.formats.openai import tool_call_dict
from looptool.data.samples import Lineage, Sample, ToolCall
from looptool.llm.client import ModelClient
from looptool.loop.events import Action, Tier, Verdict
from looptool.loop.rules import assess, calls_equivalent, decide
from looptool.loop.settings import JudgeSettings


class JudgeReply(msgspec.Struct, forbid_unknown_fields=True):
    verdict: Verdict
    analysis: str
    approach: str


_reply_decoder = msgspec.json.Decoder(JudgeReply)
_encoder = msgspec.json.Encoder()


@cache
def load_prompt(name: str) -> string.Template:
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"prompt name {name!r} must be a plain file stem")
    path = importlib.resources.files("looptool.loop") / "prompts" / f"{name}.md"
    try:
        return string.Template(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"no prompt template {name!r} (looked for {path})") from None


def data_block(payload: dict[str, Any]) -> str:
    """JSON for the ``<data>`` block; ``</`` is escaped so no string can close the block."""
    return _encoder.encode(payload).decode().replace("</", "<\\/")


def tools_json(sample: Sample) -> list[dict[str, Any]]:
    return [
        {"name": t.function.name, "description": t.function.description, "parameters": t.function.parameters}
        for t in sample.tools
    ]


def calls_json(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [tool_call_dict(c)["function"] for c in calls]


def render_judge_prompt(
    template: string.Template, sample: Sample, prediction: list[ToolCall], checker_error: str
) -> str:
    payload = {
        "tools": tools_json(sample),
        "conversation": [
            {"role": m.role, "content": m.content, "tool_calls": calls_json(m.tool_calls)} for m in sample.messages
        ],
        "label": calls_json(sample.label),
        "prediction": calls_json(prediction),
        "checker": checker_error,
    }
    return template.substitute(data=data_block(payload))


def reply_format() -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "judge_reply", "schema": msgspec.json.schema(JudgeReply), "strict": True},
    }


def tally(votes: list[Verdict | None], quorum: int) -> Verdict:
    """The verdict with at least ``quorum`` votes (ties impossible when quorum > votes/2); else unclear."""
    counted = Counter(v for v in votes if v is not None)
    if counted:
        verdict, n = counted.most_common(1)[0]
        if n >= quorum:
            return verdict
    return "unclear"


class LlmJudgement(msgspec.Struct):
    verdict: Verdict
    analysis: str
    approach: str
    votes: list[Verdict | None]
    calls: int
    invalid_replies: list[str]


async def judge_with_llm(
    client: ModelClient,
    settings: JudgeSettings,
    default_model: str,
    sample: Sample,
    prediction: list[ToolCall],
    checker_error: str,
) -> LlmJudgement:
    prompt = render_judge_prompt(load_prompt(settings.prompt), sample, prediction, checker_error)
    models = settings.models or [default_model]
    request: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt}],
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
    }
    if "structured_outputs" not in settings.extra_body:  # a caller's own constraint replaces the schema
        request["response_format"] = reply_format()
    votes: list[Verdict | None] = []
    replies: list[JudgeReply] = []
    invalid: list[str] = []
    calls = 0
    for index in range(settings.votes):
        model = models[index % len(models)]
        reply = None
        for _ in range(1 + settings.reply_retries):
            calls += 1
            response = await client.chat(
                model, **request, seed=index * 1000 + calls, extra_body=settings.extra_body or None
            )
            text = response.choices[0].message.content or ""
            try:
                reply = _reply_decoder.decode(text)
                break
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError):  # UnicodeError: a lone surrogate
                invalid.append(without_lone_surrogates(text[:2000]))
        votes.append(reply.verdict if reply else None)
        if reply:
            replies.append(reply)
    verdict = tally(votes, settings.quorum)
    chosen = next((r for r in replies if r.verdict == verdict), None)
    return LlmJudgement(
        verdict=verdict,
        analysis=chosen.analysis if chosen else f"No {settings.quorum}-vote agreement among {votes}.",
        approach=chosen.approach if chosen else "",
        votes=votes,
        calls=calls,
        invalid_replies=invalid,
    )


# --------------------------------------------------------------------------- the policy


class Judgement(msgspec.Struct, kw_only=True):
    """What the tiers concluded about one failed sample, before the action is chosen."""

    verdict: Verdict
    tier: Tier
    analysis: str
    approach: str = ""
    votes: list[Verdict | None] = msgspec.field(default_factory=list)
    llm_calls: int = 0
    invalid_replies: list[str] = msgspec.field(default_factory=list)
    corrected_label: list[ToolCall] | None = None


VERDICT_ACTIONS: dict[Verdict, Action] = {
    "prediction_wrong": "label_ok",
    "label_wrong": "label_fixed",
    "both_wrong": "discard",
}


def without_llm(
    sample: Sample, prediction: list[ToolCall], parse_error: str | None, settings: JudgeSettings
) -> Judgement | None:
    """The tiers that need no model: an equivalent prediction is "both right"; the rules settle
    one-sided cases (modes rules and cascade). None: only the LLM judge can tell."""
    if parse_error is None and calls_equivalent(prediction, sample.label):
        return Judgement(
            verdict="both_right",
            tier="match",
            analysis="The prediction equals the label up to call order; the checker was too strict.",
            approach="Keep the label.",
        )
    if settings.mode != "llm":
        rules = decide(sample, prediction, parse_error=parse_error, grounding=settings.grounding)
        if rules.verdict:
            return Judgement(verdict=rules.verdict, tier="rules", analysis=rules.analysis, approach=rules.approach)
    if settings.mode == "rules":
        return Judgement(verdict="unclear", tier="rules", analysis="The rules cannot tell label and prediction apart.")
    return None


def from_llm(llm: LlmJudgement) -> Judgement:
    return Judgement(
        verdict=llm.verdict,
        tier="llm",
        analysis=llm.analysis,
        approach=llm.approach,
        votes=llm.votes,
        llm_calls=llm.calls,
        invalid_replies=llm.invalid_replies,
    )


def confirm_correction(
    judgement: Judgement, sample: Sample, prediction: list[ToolCall], parse_error: str | None, grounding: bool
) -> Judgement:
    """A "label wrong" verdict replaces the label with the prediction only when the prediction
    itself passes the rules tier; otherwise nothing is fixed and the verdict is unclear."""
    if judgement.verdict != "label_wrong":
        return judgement
    problems = assess(prediction, sample, grounding=grounding, expect_call=bool(sample.label))
    if problems or parse_error is not None:
        reasons = "; ".join(p.message for p in problems) or (parse_error or "")
        return msgspec.structs.replace(
            judgement,
            verdict="unclear",
            analysis=f"{judgement.analysis} The proposed correction fails the rules: {reasons}",
        )
    return msgspec.structs.replace(judgement, corrected_label=prediction)


def action_for(verdict: Verdict, settings: JudgeSettings) -> Action:
    """Verdict -> action: prediction wrong keeps the label (a hard sample), label wrong fixes it,
    both wrong discards; both right and unclear as configured (the paper says both)."""
    if verdict == "both_right":
        return "label_ok" if settings.both_right == "keep" else "discard"
    if verdict == "unclear":
        return "label_ok" if settings.unclear == "keep" else "discard"
    return VERDICT_ACTIONS[verdict]


def carried_sample(sample: Sample, judgement: Judgement, action: Action, round: int) -> Sample:
    """The sample as it goes on: its lineage records the verdict; a corrected label replaces the
    old one (kept in ``meta``) under the same id — the same question, counted once."""
    history = [*sample.lineage.history, f"r{round}:{judgement.verdict}->{action}"]
    if judgement.corrected_label is None:
        return msgspec.structs.replace(sample, lineage=msgspec.structs.replace(sample.lineage, history=history))
    lineage = Lineage(
        origin="correction", round=round, parent=sample.id, source=f"judge:{judgement.tier}", history=history
    )
    meta = {**sample.meta, "replaced_label": msgspec.to_builtins(sample.label)}
    return msgspec.structs.replace(sample, label=judgement.corrected_label, lineage=lineage, meta=meta)
