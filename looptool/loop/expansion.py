"""Error-Driven Data Expansion: generating, validating and deduplicating new samples around a seed.

Two generators: an OpenAI-compatible model with JSON-schema guided output (``llm``), and the
synthetic world's own sample maker (``world``, offline). Every candidate, whichever generator
made it, passes :func:`rejection_reason` (valid tool schemas, a label that passes the rules
tier against its own tools) and the duplicate check before it joins; rejects are counted by
reason.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Literal

import msgspec

from looptool.data.calls import CallParseError, call_from_json
from looptool.data.formats._common import category_of
from looptool.data.samples import Lineage, Message, Sample, ToolCall, ToolSpec, sample_id
from looptool.llm.client import ModelClient
from looptool.loop.events import JudgeVerdict
from looptool.loop.judging import calls_json, data_block, load_prompt, tools_json
from looptool.loop.rules import assess
from looptool.loop.settings import ExpanderSettings

VARIATIONS = [
    "a single-turn request",
    "a multi-turn conversation where the request comes after a greeting",
    "a request with irrelevant extra detail",
    "a terse request",
    "a request phrased as a question",
    "a request that names every value explicitly",
    "a polite, wordy request",
    "a request from a different domain with a similar structure",
]


class GeneratedMessage(msgspec.Struct):
    role: Literal["user", "assistant", "tool"]
    content: str


class GeneratedCall(msgspec.Struct):
    name: str
    arguments: dict[str, Any]


class GeneratedSample(msgspec.Struct):
    tools: list[dict[str, Any]]
    messages: list[GeneratedMessage]
    calls: list[GeneratedCall]


class GeneratedBatch(msgspec.Struct):
    samples: list[GeneratedSample]


_batch_decoder = msgspec.json.Decoder(GeneratedBatch)


def seed_rng(*parts: object) -> random.Random:
    """A generator seeded from stable parts (run, round, seed id): replays give the same samples."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def generation_prompt(
    template_name: str,
    seed: Sample,
    wrong: list[ToolCall],
    analysis: str,
    approach: str,
    k: int,
    rng: random.Random,
    label_known: bool,
) -> str:
    payload = {
        "seed": {
            "category": seed.category,
            "tools": tools_json(seed),
            "conversation": [{"role": m.role, "content": m.content} for m in seed.messages],
            "correct_calls": calls_json(seed.label) if label_known else "unknown: infer them from the correct approach",
        },
        "wrong_calls": calls_json(wrong),
        "error_analysis": analysis,
        "correct_approach": approach,
    }
    variations = ", ".join(rng.sample(VARIATIONS, min(k, len(VARIATIONS))))
    # Only the count and our own variation words sit outside <data>: everything from the sample
    # (its category included) is inside, as data.
    return load_prompt(template_name).substitute(data=data_block(payload), k=k, variations=variations)


def reply_format() -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "generated_samples", "schema": msgspec.json.schema(GeneratedBatch)},
    }


def parse_generated(text: str) -> tuple[list[Sample], dict[str, int]]:
    """Candidates from a generator reply, and counts of what could not even be read."""
    try:
        batch = _batch_decoder.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError):  # UnicodeError: a lone surrogate
        return [], {"unparseable_reply": 1}
    if not batch.samples:  # asked for k, wrote none: as useless as garbage, and counted
        return [], {"empty_reply": 1}
    samples: list[Sample] = []
    rejected: dict[str, int] = {}
    for generated in batch.samples:
        try:
            tools = [msgspec.convert({"function": t.get("function", t)}, ToolSpec) for t in generated.tools]
            label = [call_from_json({"name": c.name, "arguments": c.arguments}) for c in generated.calls]
        except (msgspec.ValidationError, CallParseError, AttributeError):
            rejected["invalid_tool_schema"] = rejected.get("invalid_tool_schema", 0) + 1
            continue
        messages = [Message(role=m.role, content=m.content) for m in generated.messages]
        samples.append(
            Sample(
                id=sample_id(tools, messages, label),
                tools=tools,
                messages=messages,
                label=label,
                category=category_of(label, tools),
            )
        )
    return samples, rejected


def rejection_reason(sample: Sample) -> str | None:
    """Why a generated sample may not join (``None``: it may)."""
    if not sample.tools:
        return "no_tools"
    if not sample.messages or sample.messages[-1].role != "user" or not (sample.messages[-1].content or "").strip():
        return "no_request"
    for tool in sample.tools:
        parameters = tool.function.parameters
        if (
            not isinstance(parameters, dict)
            or parameters.get("type") not in ("object", "dict")
            or not isinstance(parameters.get("properties", {}), dict)
        ):
            return "invalid_tool_schema"
    names = [t.function.name for t in sample.tools]
    if len(set(names)) != len(names):
        return "invalid_tool_schema"
    issues = assess(sample.label, sample, grounding=True, expect_call=False)
    if issues:
        return f"label_{issues[0].kind}"
    return None


async def generate_with_llm(
    client: ModelClient, model: str, settings: ExpanderSettings, verdict: JudgeVerdict, seed: Sample, rng: random.Random
) -> tuple[list[Sample], dict[str, int]]:
    """One generator call for ``settings.k`` samples around ``seed``; the candidates it wrote."""
    prompt = generation_prompt(
        settings.prompt,
        seed,
        verdict.prediction,
        verdict.analysis,
        verdict.approach,
        settings.k,
        rng,
        label_known=verdict.verdict != "both_wrong",
    )
    request: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt}],
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
        "seed": rng.randrange(2**31),
    }
    if "structured_outputs" not in settings.extra_body:  # a caller's own constraint replaces the schema
        request["response_format"] = reply_format()
    response = await client.chat(model, **request, extra_body=settings.extra_body or None)
    return parse_generated(response.choices[0].message.content or "")


def as_expansion(sample: Sample, seed: Sample, round: int, generator: str, prompt: str) -> Sample:
    lineage = Lineage(
        origin="expansion",
        round=round,
        parent=seed.id,
        source=f"{generator}|{prompt}",
        history=[f"r{round}:expanded from {seed.id}"],
    )
    return msgspec.structs.replace(
        sample, lineage=lineage, meta={**sample.meta, "seed_id": seed.id, "generator": generator, "prompt": prompt}
    )
