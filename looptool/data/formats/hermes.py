"""Hermes / ShareGPT: ``{"conversations": [{"from", "value"}], "tools": ...}``.

Assistant (``gpt``) turns call tools with ``<tool_call>{json}</tool_call>`` blocks; the tools come
from a ``tools`` field (list or JSON string) or from ``<tools>…</tools>`` in the system turn.
Hermes function-calling v1 writes both as Python literals (single quotes), parsed with :mod:`ast`
and never evaluated. Every ``gpt`` turn that calls tools, or answers the human directly, is a
sample with the turns before it.
"""

from __future__ import annotations

import re
from typing import Any, cast

import msgspec

from looptool.data.calls import CallParseError, format_tool_call_blocks, json_or_literal
from looptool.data.formats._common import (
    RowRejected,
    assistant_message,
    conversation_turns,
    json_field,
    samples_from_turns,
    tools_from,
)
from looptool.data.samples import Message, Role, Sample

_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "tool": "tool",
    "function_response": "tool",
    "observation": "tool",
}
_TOOLS_BLOCK = re.compile(r"<tools>(.*?)</tools>", re.DOTALL)
_encoder = msgspec.json.Encoder()


def tools_in_text(text: str, field: str) -> list[Any]:
    """Tool specs written inside ``<tools>…</tools>``: a list, or one object a line."""
    # Prompts often *mention* "<tools></tools>" before the real block: take the first non-empty one.
    body = next((block.strip() for block in _TOOLS_BLOCK.findall(text) if block.strip()), None)
    if body is None:
        raise RowRejected(field, "no <tools>…</tools> block")
    # Hermes v1 writes the list as a Python literal (single quotes, True/False).
    try:
        if body.startswith("["):
            return list(json_or_literal(body))
        return [json_or_literal(line) for line in body.splitlines() if line.strip()]
    except CallParseError as exc:
        raise RowRejected(field, f"tools inside <tools>: {exc.reason}") from None


def parse_row(row: dict[str, Any]) -> list[Sample]:
    turns = conversation_turns(row)
    raw_tools = json_field(row, "tools") if "tools" in row else None
    messages: list[Message] = []
    for field, speaker, value in turns:
        role = _ROLES.get(speaker)
        if role is None:
            raise RowRejected(f"{field}.from", f"unknown speaker {speaker!r}")
        if role == "system":
            if raw_tools is None:
                raw_tools = tools_in_text(value, f"{field}.value")
            continue  # the system turn carried the tool prompt; its tools are in `tools`
        if role == "assistant":
            messages.append(assistant_message(value, f"{field}.value"))
        else:
            messages.append(Message(role=cast(Role, role), content=value))
    if raw_tools is None:
        raise RowRejected("tools", "missing (no tools field and no system turn with <tools>)")
    return samples_from_turns(tools_from(raw_tools, "tools"), messages, "conversations")


def export_row(sample: Sample) -> dict[str, Any]:
    speaker = {"user": "human", "assistant": "gpt", "tool": "tool", "system": "system"}
    turns = []
    for message in [*sample.messages]:
        value = format_tool_call_blocks(message.tool_calls) if message.tool_calls else (message.content or "")
        turns.append({"from": speaker[message.role], "value": value})
    turns.append({"from": "gpt", "value": format_tool_call_blocks(sample.label)})
    tools = [
        {
            "type": "function",
            "function": {
                "name": t.function.name,
                "description": t.function.description,
                "parameters": t.function.parameters,
            },
        }
        for t in sample.tools
    ]
    return {"conversations": turns, "tools": _encoder.encode(tools).decode()}
