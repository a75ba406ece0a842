"""ToolACE-style rows: tools as a JSON list in ``system``, Python-call syntax answers.

``{"system": "...[{tool}, ...]", "conversations": [{"from": "user"|"assistant"|"tool", "value"}]}``;
an assistant turn like ``[f(a=1, b="x"), g()]`` is parsed with :mod:`ast` (never evaluated).
Every assistant turn that calls tools, or answers the user directly, is a sample with the turns
before it; the summary after a tool result is not. Parameter types are BFCL's (``dict``,
``float``, ``tuple``), which the checker reads as they are.
"""

from __future__ import annotations

from typing import Any

import msgspec

from looptool.data.calls import format_python_calls
from looptool.data.formats._common import (
    RowRejected,
    assistant_message,
    conversation_turns,
    need,
    samples_from_turns,
    tools_from,
)
from looptool.data.samples import Message, Sample, ToolSpec

_encoder = msgspec.json.Encoder()
# The same dialogues converted for LLaMA-Factory name their speakers as ShareGPT does.
LLAMA_FACTORY_SPEAKERS = {"human": "user", "gpt": "assistant", "function_call": "assistant", "observation": "tool"}
PREAMBLE = "You are an expert in composing functions. Here is a list of functions in JSON format that you can invoke:\n"


def tools_in_system(system: str) -> list[Any]:
    start = system.find("[")
    if start < 0:
        raise RowRejected("system", "no JSON list of tools")
    try:
        return list(_first_json_list(system[start:]))
    except msgspec.DecodeError as exc:
        raise RowRejected("system", f"invalid tool JSON: {exc}") from None


def _first_json_list(text: str) -> Any:
    # The list is followed by more prose: find its end by bracket depth outside strings.
    depth, in_string, escaped = 0, False, False
    for index, char in enumerate(text):
        if in_string:
            escaped = char == "\\" and not escaped
            if char == '"' and not escaped:
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return msgspec.json.decode(text[: index + 1])
    raise msgspec.DecodeError("unterminated tool list")


def python_calls(text: str, field: str, tools: list[ToolSpec]) -> Message:
    """ToolACE names some tools with spaces or dashes (``Get Market Trends``) and calls them so:
    such names are swapped for placeholders while the calls are parsed, then put back."""
    aliases = {}
    for index, tool in enumerate(tools):
        name = tool.function.name
        if not all(part.isidentifier() for part in name.split(".")) and f"{name}(" in text:
            alias = f"__looptool_tool_{index}"
            text = text.replace(f"{name}(", f"{alias}(")
            aliases[alias] = name
    message = assistant_message(text, field)
    for call in message.tool_calls:
        call.name = aliases.get(call.name, call.name)
    if aliases and message.content is not None:
        for alias, name in aliases.items():
            message.content = message.content.replace(f"{alias}(", f"{name}(")
    return message


def parse_row(row: dict[str, Any]) -> list[Sample]:
    tools = tools_from(tools_in_system(need(row, "system", str)), "system")
    messages = []
    for field, name, value in conversation_turns(row):
        speaker = LLAMA_FACTORY_SPEAKERS.get(name, name)
        if speaker not in ("user", "assistant", "tool"):
            raise RowRejected(f"{field}.from", f"unknown speaker {name!r} (user, assistant, tool)")
        if speaker == "assistant":
            messages.append(python_calls(value, f"{field}.value", tools))
        else:
            messages.append(Message(role=speaker, content=value))
    return samples_from_turns(tools, messages, "conversations")


def export_row(sample: Sample) -> dict[str, Any]:
    tools = [
        {"name": t.function.name, "description": t.function.description, "parameters": t.function.parameters}
        for t in sample.tools
    ]
    turns = [
        {"from": m.role, "value": format_python_calls(m.tool_calls) if m.tool_calls else (m.content or "")}
        for m in sample.messages
        if m.role != "system"
    ]
    turns.append({"from": "assistant", "value": format_python_calls(sample.label) if sample.label else ""})
    return {"system": PREAMBLE + _encoder.encode(tools).decode(), "conversations": turns}
