"""The one place a sample becomes what a chat template renders: the request the client sends
(messages in the OpenAI wire format, tools) and — for training — the messages the serving vLLM
hands its chat template, so that a label is trained in the text the served model writes."""

from __future__ import annotations

import json
from typing import Any

from looptool.data.formats.openai import export_row
from looptool.data.samples import Sample


def rendered(sample: Sample, with_label: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """``(messages, tools)`` of a request for ``sample``'s context (with its labelled turn
    appended when ``with_label``); no tools is None, as a server gets none."""
    row = export_row(sample)
    return _wire(row["messages"] if with_label else row["messages"][:-1]), row["tools"] or None


def template_rendered(
    sample: Sample, with_label: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """``(messages, tools)`` as a chat template gets them when vLLM serves ``sample``:
    :func:`rendered` with each call's arguments parsed back into an object, as vLLM does with
    every assistant turn of a request before rendering (``_postprocess_messages`` in its
    ``chat_utils``).

    What the trainer renders, so that a label is trained in the text the served model writes
    and reads: Qwen2.5's and Llama 3's templates ``tojson`` whatever they get, and a JSON
    string there would teach the model to write its arguments as a quoted string.
    """
    messages, tools = rendered(sample, with_label)
    return _as_objects(messages), tools


def wire_messages(sample: Sample, with_label: bool = False) -> list[dict[str, Any]]:
    """Messages in the OpenAI request format: tool calls with ids and JSON-string arguments; a
    tool result without an id answers the next unanswered call before it.

    Arguments are serialised as ``json.dumps`` does (``", "`` / ``": "``), the same text a
    chat template's ``tojson`` writes for a dict, so that the server renders a conversation
    exactly as the training data (``export_row``, dict arguments) is rendered.
    """
    return rendered(sample, with_label)[0]


def _wire(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    wire = []
    counter = 0
    unanswered: list[str] = []  # ids of the last calls, for tool results that carry none
    for message in messages:
        message = dict(message)
        if message["role"] == "tool" and message.get("tool_call_id") is None and unanswered:
            message["tool_call_id"] = unanswered.pop(0)
        if message.get("tool_calls"):
            calls: list[dict[str, Any]] = []
            for call in message["tool_calls"]:
                calls.append(
                    {
                        "id": f"call_{counter}",
                        "type": "function",
                        "function": {
                            "name": call["function"]["name"],
                            "arguments": json.dumps(call["function"]["arguments"], ensure_ascii=False),
                        },
                    }
                )
                counter += 1
            message["tool_calls"] = calls
            unanswered = [call["id"] for call in calls]
        wire.append(message)
    return wire


def _as_objects(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for message in messages:
        for call in message.get("tool_calls") or []:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return messages


def render_request(sample: Sample) -> dict[str, Any]:
    """The chat request for a sample's context: messages and tools, the model free to call."""
    messages, tools = rendered(sample)
    request: dict[str, Any] = {"messages": messages}
    if tools:
        request["tools"] = tools
        request["tool_choice"] = "auto"
    return request
