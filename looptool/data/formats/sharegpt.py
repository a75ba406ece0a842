"""ShareGPT as LLaMA-Factory writes it (its ``data/README.md``, ``glaive_toolcall_en_demo.json``):

``{"conversations": [{"from": "human" | "gpt" | "function_call" | "observation", "value": str}],
"system": str (optional), "tools": "<JSON list of functions>" (optional)}``.

A ``function_call`` turn holds one call ``{"name", "arguments"}`` or a list of them (parallel
calls); ``observation`` turns are tool results. Every call turn becomes a sample with the turns
before it, and so does every ``gpt`` reply straight to a ``human`` turn (no call).

ToolACE converted for LLaMA-Factory keeps ToolACE's habits in this layout: ``tools`` empty, the
tools as a JSON list inside ``system``, and calls in Python syntax (``[f(a=1)]``) — both read
here; a call to a tool the row does not offer is rejected with the row (its label check).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import msgspec

from looptool.data.calls import CallParseError, calls_from_json, json_or_literal
from looptool.data.formats._common import (
    RowRejected,
    calls_from,
    conversation_turns,
    json_field,
    need,
    samples_from_turns,
    tools_from,
)
from looptool.data.formats.toolace import python_calls, tools_in_system
from looptool.data.samples import Message, Sample, ToolCall, ToolSpec

_encoder = msgspec.json.Encoder()


def parse_row(row: dict[str, Any]) -> list[Sample]:
    turns = conversation_turns(row)
    if row.get("tools"):
        tools = tools_from(json_field(row, "tools"), "tools")
    elif isinstance(row.get("system"), str) and "[" in row["system"]:  # ToolACE's place for them
        tools = tools_from(tools_in_system(row["system"]), "system")
    else:
        tools = []
    messages: list[Message] = []
    if row.get("system"):
        messages.append(Message(role="system", content=need(row, "system", str)))
    for field, speaker, value in turns:
        if speaker == "human":
            messages.append(Message(role="user", content=value))
        elif speaker == "gpt":
            messages.append(Message(role="assistant", content=value))
        elif speaker == "function_call":
            calls = calls_from(partial(_calls, value, tools), f"{field}.value")
            if messages and messages[-1].role == "assistant" and not messages[-1].tool_calls:
                messages[-1].tool_calls = calls  # a gpt thought followed by its call: one turn
            else:
                messages.append(Message(role="assistant", tool_calls=calls))
        elif speaker == "observation":
            messages.append(Message(role="tool", content=value))
        else:
            raise RowRejected(f"{field}.from", f"unknown speaker {speaker!r} (human, gpt, function_call, observation)")
    return samples_from_turns(tools, messages, "conversations")


def export_row(sample: Sample) -> dict[str, Any]:
    turns: list[dict[str, str]] = []
    system = ""
    for message in [*sample.messages, _label_turn(sample)]:
        if message.role == "system":
            system = message.content or ""
        elif message.role == "user":
            turns.append({"from": "human", "value": message.content or ""})
        elif message.role == "tool":
            turns.append({"from": "observation", "value": message.content or ""})
        elif message.tool_calls:
            calls = [{"name": c.name, "arguments": c.arguments} for c in message.tool_calls]
            turns.append(
                {"from": "function_call", "value": _encoder.encode(calls[0] if len(calls) == 1 else calls).decode()}
            )
        else:
            turns.append({"from": "gpt", "value": message.content or ""})
    tools = [
        {"name": t.function.name, "description": t.function.description, "parameters": t.function.parameters}
        for t in sample.tools
    ]
    row: dict[str, Any] = {"conversations": turns, "tools": _encoder.encode(tools).decode()}
    if system:
        row["system"] = system
    return row


def _calls(text: str, tools: list[ToolSpec]) -> list[ToolCall]:
    try:
        return calls_from_json(json_or_literal(text))
    except CallParseError:
        if not text.lstrip().startswith("["):
            raise
    return python_calls(text, "value", tools).tool_calls  # ToolACE's [f(a=1), g(b="x")]


def _label_turn(sample: Sample) -> Message:
    return Message(role="assistant", tool_calls=sample.label, content=None if sample.label else "")
