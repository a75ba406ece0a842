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

from .formats.openai import tool_call_dict
from .models import ModelClient
from .schemas import Sample, ToolCall, Verdict
from .settings import JudgeSettings


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
    path = importlib.resources.files("looptool") / "prompts" / f"{name}.md"
    try:
        return string.Template(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"no prompt template {name!r} (looked for {path})") from None


def data_block(payload: dict[str, Any]) -> str:
    """JSON for the ``<data>`` block; ``</`` is escaped so no string can close the block."""
    return _encoder.encode(payload).decode().replace("</", "<\\/")


def tools_json(sample: Sample) -> list[dict[str, Any]]:
    return [{"name": t.function.name, "description": t.function.description, "parameters": t.function.parameters} for t in sample.tools]


def calls_json(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [tool_call_dict(c)["function"] for c in calls]


def render_judge_prompt(template: string.Template, sample: Sample, prediction: list[ToolCall], checker_error: str) -> str:
    payload = {
        "tools": tools_json(sample),
        "conversation": [{"role": m.role, "content": m.content, "tool_calls": calls_json(m.tool_calls)} for m in sample.messages],
        "label": calls_json(sample.label),
        "prediction": calls_json(prediction),
        "checker": checker_error,
    }
    return template.substitute(data=data_block(payload))


def reply_format() -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "judge_reply", "schema": msgspec.json.schema(JudgeReply), "strict": True}}


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


async def judge_with_llm(client: ModelClient, settings: JudgeSettings, default_model: str, sample: Sample, prediction: list[ToolCall], checker_error: str) -> LlmJudgement:
    prompt = render_judge_prompt(load_prompt(settings.prompt), sample, prediction, checker_error)
    models = settings.models or [default_model]
    request: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "temperature": settings.temperature, "max_tokens": settings.max_tokens}
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
            response = await client.chat(model, **request, seed=index * 1000 + calls, extra_body=settings.extra_body or None)
            text = response.choices[0].message.content or ""
            try:
                reply = _reply_decoder.decode(text)
                break
            except (msgspec.DecodeError, msgspec.ValidationError):
                invalid.append(text[:2000])
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
