"""Controlled label noise: the ways a tool-call label goes wrong, applied on purpose.

Each kind takes a correct label and returns a corrupted copy (or ``None`` when the label has
nothing to corrupt that way). The synthetic world records the kind in ``sample.meta["noise"]``
so tests can measure how much of it the judge finds; the checker parity tests use the same
corruptions as realistic wrong predictions.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from looptool.data.samples import ToolCall, ToolSpec

NoiseFn = Callable[[list[ToolCall], list[ToolSpec], random.Random], list[ToolCall] | None]


def _copy(label: list[ToolCall]) -> list[ToolCall]:
    return [ToolCall(name=c.name, arguments=dict(c.arguments)) for c in label]


def _params(tools: list[ToolSpec], name: str) -> dict[str, Any]:
    for tool in tools:
        if tool.function.name == name:
            return tool.function.parameters
    return {}


def wrong_value(label: list[ToolCall], tools: list[ToolSpec], rng: random.Random) -> list[ToolCall] | None:
    """One argument gets a different value of the same type."""
    out = _copy(label)
    candidates = [(c, k) for c in out for k, v in c.arguments.items() if isinstance(v, (str, int, float, bool, list))]
    if not candidates:
        return None
    call, key = rng.choice(candidates)
    value = call.arguments[key]
    spec = _params(tools, call.name).get("properties", {}).get(key, {})
    if "enum" in spec and len(spec["enum"]) > 1:
        call.arguments[key] = rng.choice([e for e in spec["enum"] if e != value])
    elif isinstance(value, bool):
        call.arguments[key] = not value
    elif isinstance(value, int):
        call.arguments[key] = value + rng.randint(1, 9)
    elif isinstance(value, float):
        call.arguments[key] = round(value * 1.5 + 1.0, 2)
    elif isinstance(value, list):
        call.arguments[key] = value[:-1] if value else ["extra"]
    else:
        call.arguments[key] = f"{value} {rng.choice(['Springfield', 'unknown', 'n/a'])}"
    return out


def missing_required(label: list[ToolCall], tools: list[ToolSpec], rng: random.Random) -> list[ToolCall] | None:
    out = _copy(label)
    candidates = [(c, k) for c in out for k in _params(tools, c.name).get("required", []) if k in c.arguments]
    if not candidates:
        return None
    call, key = rng.choice(candidates)
    del call.arguments[key]
    return out


def wrong_function(label: list[ToolCall], tools: list[ToolSpec], rng: random.Random) -> list[ToolCall] | None:
    """A call goes to another offered function (keeping its arguments), or a made-up one."""
    if not label:
        return None
    out = _copy(label)
    call = rng.choice(out)
    others = [t.function.name for t in tools if t.function.name != call.name]
    call.name = rng.choice(others) if others else call.name + "_v2"
    return out


def wrong_type(label: list[ToolCall], tools: list[ToolSpec], rng: random.Random) -> list[ToolCall] | None:
    """A number becomes its string, or a string becomes a number."""
    out = _copy(label)
    candidates = [
        (c, k)
        for c in out
        for k, v in c.arguments.items()
        if isinstance(v, (int, float, str)) and not isinstance(v, bool)
    ]
    if not candidates:
        return None
    call, key = rng.choice(candidates)
    value = call.arguments[key]
    call.arguments[key] = str(value) if not isinstance(value, str) else rng.randint(2, 99)
    return out


def extra_param(label: list[ToolCall], tools: list[ToolSpec], rng: random.Random) -> list[ToolCall] | None:
    if not label:
        return None
    out = _copy(label)
    rng.choice(out).arguments["verbose"] = True
    return out


def dropped_call(label: list[ToolCall], tools: list[ToolSpec], rng: random.Random) -> list[ToolCall] | None:
    if len(label) < 2:
        return None
    out = _copy(label)
    del out[rng.randrange(len(out))]
    return out


def shuffled(label: list[ToolCall], tools: list[ToolSpec], rng: random.Random) -> list[ToolCall] | None:
    """Not noise: the same calls in another order (must still pass)."""
    if len(label) < 2:
        return None
    out = _copy(label)
    rng.shuffle(out)
    return out


LABEL_NOISE: dict[str, NoiseFn] = {
    "wrong_value": wrong_value,
    "missing_required": missing_required,
    "wrong_function": wrong_function,
    "wrong_type": wrong_type,
}

PREDICTION_ERRORS: dict[str, NoiseFn] = {
    **LABEL_NOISE,
    "extra_param": extra_param,
    "dropped_call": dropped_call,
    "shuffled": shuffled,
}
