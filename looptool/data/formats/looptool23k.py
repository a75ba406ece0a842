"""The LoopTool reference dataset's layout (LoopTool-23k).

* ``instruction``: the system prompt, tools as one JSON object a line inside ``<tools>…</tools>``;
* ``input``: the dialogue so far, each turn starting a line with a role marker
  (``user:``, ``assistant:``, ``tool:``; ``observation:`` is read as ``tool:``); input without
  markers is one user turn;
* ``output``: the label, ``<tool_call>\\n{json}\\n</tool_call>`` blocks, or plain text for "no call".

The system prompt's prose is not kept (the tools are); export writes a standard one.
"""

from __future__ import annotations

import re
from typing import Any, cast

import msgspec

from looptool.data.calls import extract_calls, format_tool_call_blocks
from looptool.data.formats._common import (
    RowRejected,
    assistant_message,
    calls_from,
    make_sample,
    need,
    tools_from,
)
from looptool.data.formats.hermes import tools_in_text
from looptool.data.samples import Message, Role, Sample

_MARKER = re.compile(r"^(user|assistant|tool|observation)\s*:\s?", re.IGNORECASE | re.MULTILINE)
_encoder = msgspec.json.Encoder()

SYSTEM_PROMPT = (
    "You are a helpful assistant that can call functions.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags."
)


def parse_dialogue(text: str, field: str) -> list[Message]:
    markers = list(_MARKER.finditer(text))
    if not markers:
        return [Message(role="user", content=text.strip())] if text.strip() else []
    if text[: markers[0].start()].strip():
        raise RowRejected(field, "text before the first role marker")
    messages = []
    for index, marker in enumerate(markers):
        end = markers[index + 1].start() if index + 1 < len(markers) else len(text)
        body = text[marker.end() : end].strip()
        role = marker.group(1).lower()
        if role == "assistant":
            messages.append(assistant_message(body, field))
        else:
            messages.append(Message(role=cast(Role, "tool" if role == "observation" else role), content=body))
    return messages


def parse_row(row: dict[str, Any]) -> Sample:
    tools = tools_from(tools_in_text(need(row, "instruction", str), "instruction"), "instruction")
    messages = parse_dialogue(need(row, "input", str), "input")
    output = need(row, "output", str)
    label = calls_from(lambda: extract_calls(output), "output")
    return make_sample(tools, messages, label)


def export_row(sample: Sample) -> dict[str, Any]:
    tool_lines = "\n".join(
        _encoder.encode(
            {
                "type": "function",
                "function": {
                    "name": t.function.name,
                    "description": t.function.description,
                    "parameters": t.function.parameters,
                },
            }
        ).decode()
        for t in sample.tools
    )
    turns = []
    for message in sample.messages:
        if message.role == "system":
            raise ValueError(f"sample {sample.id}: LoopTool-23k input has no system turns")
        body = format_tool_call_blocks(message.tool_calls) if message.tool_calls else (message.content or "")
        turns.append(f"{message.role}: {body}")
    return {
        "instruction": SYSTEM_PROMPT.format(tools=tool_lines),
        "input": "\n".join(turns),
        "output": format_tool_call_blocks(sample.label) if sample.label else "",
    }
