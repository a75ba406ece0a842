"""The deterministic tier of label verification: schema validity and grounding of calls.

``validate_calls`` checks calls against the offered tool specs (unknown function, missing
required parameter, hallucinated parameter, wrong type, enum violation — recursively into
arrays and objects). ``ungrounded_values`` finds argument values that the conversation never
mentions. ``decide`` turns both into a verdict where the evidence is unambiguous, so the LLM
judge only sees the cases rules cannot settle.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from looptool.data.samples import Message, Sample, ToolCall, ToolSpec
from looptool.loop.events import Verdict

IssueKind = Literal[
    "unknown_function",
    "missing_required",
    "hallucinated_param",
    "wrong_type",
    "enum_violation",
    "ungrounded",
    "no_call",
    "unexpected_call",
    "parse",
]
HARD = frozenset(
    {"unknown_function", "missing_required", "hallucinated_param", "wrong_type", "enum_violation", "no_call", "parse"}
)


class Issue(msgspec.Struct, frozen=True):
    kind: IssueKind
    message: str
    call: int = -1
    param: str | None = None


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "float": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "tuple": (list,),
    "object": (dict,),
    "dict": (dict,),
}


def _type_issue(value: Any, schema: dict[str, Any], where: str) -> str | None:
    declared = schema.get("type")
    if isinstance(declared, list):  # JSON Schema unions: ["string", "null"]
        if value is None and "null" in declared:
            return None
        declared = next((d for d in declared if d != "null"), None)
    allowed = _JSON_TYPES.get(declared or "")
    if allowed is not None:
        if isinstance(value, bool) and bool not in allowed:
            return f"{where}: expected {declared}, got boolean"
        if not isinstance(value, allowed):
            return f"{where}: expected {declared}, got {type(value).__name__}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: {value!r} is not one of {schema['enum']}"
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            if problem := _type_issue(item, schema["items"], f"{where}[{index}]"):
                return problem
    if isinstance(value, dict) and isinstance(schema.get("properties"), dict):
        for key in schema.get("required", []):
            if key not in value:
                return f"{where}: missing key {key!r}"
        for key, item in value.items():
            if key in schema["properties"] and (
                problem := _type_issue(item, schema["properties"][key], f"{where}.{key}")
            ):
                return problem
    return None


def validate_calls(calls: list[ToolCall], tools: list[ToolSpec]) -> list[Issue]:
    """Schema problems of ``calls`` against the offered ``tools``."""
    specs = {tool.function.name: tool.function.parameters or {} for tool in tools}
    issues = []
    for index, call in enumerate(calls):
        schema = specs.get(call.name)
        if schema is None:
            issues.append(Issue("unknown_function", f"call {index}: {call.name!r} is not an offered tool", index))
            continue
        properties = schema.get("properties", {})
        for param in schema.get("required", []):
            if param not in call.arguments:
                issues.append(
                    Issue(
                        "missing_required",
                        f"call {index} ({call.name}): required parameter {param!r} missing",
                        index,
                        param,
                    )
                )
        for param, value in call.arguments.items():
            if param not in properties:
                issues.append(
                    Issue(
                        "hallucinated_param",
                        f"call {index} ({call.name}): parameter {param!r} is not in the tool's schema",
                        index,
                        param,
                    )
                )
                continue
            problem = _type_issue(value, properties[param], f"call {index} ({call.name}) {param}")
            if problem:
                kind: IssueKind = "enum_violation" if "is not one of" in problem else "wrong_type"
                issues.append(Issue(kind, problem, index, param))
    return issues


_SPACE = re.compile(r"\s+")


def _normalise(text: str) -> str:
    return _SPACE.sub(" ", text.lower()).strip()


def _grounded(value: Any, text: str) -> bool:
    if value is None or isinstance(value, bool):
        return True  # flags and nulls are not spelled out in requests
    if isinstance(value, str):
        return not value.strip() or _normalise(value) in text
    if isinstance(value, (int, float)):
        forms = {str(value)}
        if isinstance(value, float) and value.is_integer():
            forms.add(str(int(value)))
        return any(re.search(rf"(?<![\d.]){re.escape(form)}(?![\d])", text) for form in forms)
    if isinstance(value, list):
        return all(_grounded(item, text) for item in value)
    if isinstance(value, dict):
        return all(_grounded(item, text) for item in value.values())
    return True


def conversation_text(messages: list[Message]) -> str:
    """What the user and the tools said: where argument values may come from."""
    return _normalise(" ".join(m.content or "" for m in messages if m.role in ("user", "tool", "system")))


def ungrounded_values(calls: list[ToolCall], messages: list[Message]) -> list[Issue]:
    text = conversation_text(messages)
    issues = []
    for index, call in enumerate(calls):
        for param, value in call.arguments.items():
            if not _grounded(value, text):
                issues.append(
                    Issue(
                        "ungrounded",
                        f"call {index} ({call.name}) {param}: {value!r} is not mentioned in the conversation",
                        index,
                        param,
                    )
                )
    return issues


def calls_equivalent(a: list[ToolCall], b: list[ToolCall]) -> bool:
    """Same calls as an order-insensitive multiset (argument order never matters)."""
    encoder = msgspec.json.Encoder(order="sorted")
    return sorted(encoder.encode(c) for c in a) == sorted(encoder.encode(c) for c in b)


class RulesDecision(msgspec.Struct):
    verdict: Verdict | None  # None: the rules cannot settle it
    analysis: str
    approach: str
    label_issues: list[Issue]
    prediction_issues: list[Issue]


def assess(calls: list[ToolCall], sample: Sample, *, grounding: bool, expect_call: bool) -> list[Issue]:
    issues = validate_calls(calls, sample.tools)
    if grounding:
        issues += ungrounded_values(calls, sample.messages)
    if expect_call and not calls:
        issues.append(Issue("no_call", "no tool call, though the request needs one"))
    return issues


def decide(
    sample: Sample, prediction: list[ToolCall], *, parse_error: str | None = None, grounding: bool = True
) -> RulesDecision:
    """Settle label vs prediction where the evidence is one-sided; else ``verdict=None``."""
    if parse_error is None and calls_equivalent(prediction, sample.label):
        return RulesDecision(
            "both_right",
            "The prediction equals the label (up to call order); the checker was too strict.",
            "Keep the label.",
            [],
            [],
        )
    label_issues = assess(sample.label, sample, grounding=grounding, expect_call=False)
    if parse_error is not None:
        prediction_issues = [Issue("parse", f"the reply is not a well-formed tool call: {parse_error}")]
    else:
        prediction_issues = assess(prediction, sample, grounding=grounding, expect_call=bool(sample.label))
    label_bad, prediction_bad = bool(label_issues), bool(prediction_issues)
    describe = "; ".join
    if label_bad and not prediction_bad and (prediction or not sample.label):
        return RulesDecision(
            "label_wrong",
            f"The label is invalid ({describe(i.message for i in label_issues)}) while the prediction is valid and grounded.",
            "Use the prediction as the label.",
            label_issues,
            prediction_issues,
        )
    if prediction_bad and not label_bad:
        return RulesDecision(
            "prediction_wrong",
            f"The prediction is wrong: {describe(i.message for i in prediction_issues)}.",
            "Call exactly the label's functions with arguments taken from the request, as the tools' schemas require.",
            label_issues,
            prediction_issues,
        )
    if label_bad and prediction_bad:
        return RulesDecision(
            "both_wrong",
            f"Both are invalid. Label: {describe(i.message for i in label_issues)}. Prediction: {describe(i.message for i in prediction_issues)}.",
            "Call the offered function the request asks for, with every required parameter, values of the declared types taken from the request.",
            label_issues,
            prediction_issues,
        )
    return RulesDecision(None, "", "", label_issues, prediction_issues)
