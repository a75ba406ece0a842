"""OpenAI / TRL conversational JSONL: ``{"messages": [...], "tools": [...]}``.

The last assistant turn is the label (its ``tool_calls``; none means "no call"); everything
before it is the context. Export writes the same shape, arguments as objects (what TRL's chat
templates expect).
"""

from __future__ import annotations

from typing import Any

from looptool.data.calls import call_from_json
from looptool.data.formats._common import RowRejected, calls_from, need, sample_from_conversation, tools_from
from looptool.data.samples import Message, Sample, ToolCall


def parse_message(raw: Any, field: str) -> Message:
    if not isinstance(raw, dict):
        raise RowRejected(field, f"expected an object, got {type(raw).__name__}")
    role = raw.get("role")
    if role not in ("system", "user", "assistant", "tool"):
        raise RowRejected(f"{field}.role", f"unknown role {role!r}")
    content = raw.get("content")
    if content is not None and not isinstance(content, str):
        raise RowRejected(f"{field}.content", f"expected a string, got {type(content).__name__}")
    tool_calls = calls_from(lambda: [call_from_json(c) for c in raw.get("tool_calls") or []], f"{field}.tool_calls")
    return Message(
        role=role, content=content, tool_calls=tool_calls, name=raw.get("name"), tool_call_id=raw.get("tool_call_id")
    )


def parse_row(row: dict[str, Any]) -> Sample:
    raw_messages = need(row, "messages", list)
    tools = tools_from(row.get("tools", []), "tools")
    messages = [parse_message(m, f"messages[{i}]") for i, m in enumerate(raw_messages)]
    return sample_from_conversation(tools, messages, "messages")


def message_dict(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [tool_call_dict(c) for c in message.tool_calls]
    if message.name is not None:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def tool_call_dict(call: ToolCall) -> dict[str, Any]:
    return {"type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def export_row(sample: Sample) -> dict[str, Any]:
    """TRL-ready: ``messages`` (context + labelled assistant turn) and ``tools``."""
    answer = Message(role="assistant", content=None if sample.label else "", tool_calls=sample.label)
    return {
        "messages": [message_dict(m) for m in [*sample.messages, answer]],
        "tools": [{"type": "function", "function": _function_dict(t.function)} for t in sample.tools],
    }


def _function_dict(function: Any) -> dict[str, Any]:
    return {"name": function.name, "description": function.description, "parameters": function.parameters}
