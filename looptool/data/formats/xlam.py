"""xLAM / APIGen: ``{"query": str, "tools": "<json>", "answers": "<json>"}`` (single turn)."""

from __future__ import annotations

from typing import Any

import msgspec

from looptool.data.calls import call_from_json
from looptool.data.formats._common import (
    RowRejected,
    calls_from,
    json_field,
    make_sample,
    need,
    tools_from,
)
from looptool.data.samples import Message, Sample

_encoder = msgspec.json.Encoder()


def parse_row(row: dict[str, Any]) -> Sample:
    query = need(row, "query", str)
    tools = tools_from(json_field(row, "tools"), "tools")
    answers = json_field(row, "answers")
    if not isinstance(answers, list):
        raise RowRejected("answers", f"expected a list of calls, got {type(answers).__name__}")
    label = calls_from(lambda: [call_from_json(a) for a in answers], "answers")
    return make_sample(tools, [Message(role="user", content=query)], label)


def export_row(sample: Sample) -> dict[str, Any]:
    if len(sample.messages) != 1 or sample.messages[0].role != "user":
        raise ValueError(f"sample {sample.id}: xLAM holds single-turn samples only")
    return {
        "query": sample.messages[0].content,
        "tools": _encoder.encode(
            [
                {"name": t.function.name, "description": t.function.description, "parameters": t.function.parameters}
                for t in sample.tools
            ]
        ).decode(),
        "answers": _encoder.encode([{"name": c.name, "arguments": c.arguments} for c in sample.label]).decode(),
    }
