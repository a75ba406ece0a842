"""``looptool doctor``: checks a set-up before a run does — the bus, each model endpoint, runtime
LoRA loading, tool calling, the policy's weights and chat template — and says what to fix."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import msgspec

from looptool.kernel.bus import Bus
from looptool.llm.client import ModelSettings
from looptool.llm.families import model_chat_template, model_family
from looptool.loop.settings import Settings


class Finding(msgspec.Struct):
    check: str
    ok: bool
    detail: str


async def diagnose(settings: Settings) -> list[Finding]:
    findings: list[Finding] = []

    async def run(check: str, probe: Callable[[], Awaitable[str]]) -> None:
        try:
            findings.append(Finding(check, True, await probe()))
        except Exception as exc:  # every failure is a finding, not a crash
            findings.append(Finding(check, False, str(exc) or repr(exc)))

    await run("bus", lambda: _bus(settings))
    endpoints = {"policy": settings.model, "judge": settings.judge_model, "generator": settings.generator_model}
    for role, endpoint in endpoints.items():
        await run(f"{role} endpoint", lambda e=endpoint: _served(e))  # type: ignore[misc]
    await run("tool calling", lambda: _tool_calling(settings.model))
    await run("runtime LoRA loading", lambda: _runtime_lora(settings.model))
    await run("policy weights", lambda: _weights(settings.trainer.base_model))
    await run("chat template", lambda: _template(settings))
    return findings


async def _bus(settings: Settings) -> str:
    bus = await Bus.connect(settings.nats, name="looptool-doctor")
    try:
        return f"{settings.nats.url}: connected, stream and buckets in place"
    finally:
        await bus.close()


def _client(endpoint: ModelSettings) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {endpoint.key()}"})


async def _served(endpoint: ModelSettings) -> str:
    async with _client(endpoint) as http:
        response = await http.get(f"{endpoint.base_url.rstrip('/')}/models")
    if response.status_code == 401:
        raise RuntimeError(f"{endpoint.base_url}: the API key is refused (api_key / api_key_file)")
    response.raise_for_status()
    served = [m["id"] for m in response.json().get("data", [])]
    if endpoint.model not in served:
        raise RuntimeError(f"{endpoint.base_url} serves {served}, not {endpoint.model!r}")
    return f"{endpoint.base_url} serves {endpoint.model!r}"


async def _tool_calling(endpoint: ModelSettings) -> str:
    tool = {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}}
    body = {
        "model": endpoint.model,
        "messages": [{"role": "user", "content": "ping"}],
        "tools": [tool],
        "tool_choice": "auto",
        "max_tokens": 1,
        **({"chat_template_kwargs": endpoint.chat_template_kwargs} if endpoint.chat_template_kwargs else {}),
    }
    async with _client(endpoint) as http:
        response = await http.post(f"{endpoint.base_url.rstrip('/')}/chat/completions", json=body)
    if response.status_code >= 400:
        raise RuntimeError(
            f"a request with tools is refused ({response.status_code}: {response.text[:200]}); "
            "serve with --enable-auto-tool-choice --tool-call-parser <the family's parser>"
        )
    return "requests with tools and tool_choice=auto are served"


async def _runtime_lora(endpoint: ModelSettings) -> str:
    # Loading an adapter that does not exist: a server that can load adapters says so; one that
    # cannot has no such route (FastAPI's bare 404).
    body = {"lora_name": "looptool-doctor-check", "lora_path": "/nonexistent/looptool-doctor"}
    async with _client(endpoint) as http:
        response = await http.post(f"{endpoint.base_url.rstrip('/')}/load_lora_adapter", json=body)
    if response.status_code == 404 and response.json().get("detail") == "Not Found":
        raise RuntimeError("the server cannot load adapters: set VLLM_ALLOW_RUNTIME_LORA_UPDATING=true, --enable-lora")
    if response.status_code == 200:
        raise RuntimeError("the server claims to have loaded an adapter that does not exist")
    return "the server loads adapters at run time"


async def _weights(base_model: str) -> str:
    directory = Path(base_model)
    if not (directory / "config.json").is_file():
        raise RuntimeError(f"trainer.base_model {base_model}: no config.json (the trainer needs the weights locally)")
    weights = sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin"))
    if not weights:
        raise RuntimeError(f"trainer.base_model {base_model}: no *.safetensors or *.bin weights")
    for path in weights:
        with open(path, "rb") as file:
            file.read(8)
    return f"{base_model}: {len(weights)} weight file(s) readable"


async def _template(settings: Settings) -> str:
    from looptool.data.worlds.synthetic import build
    from looptool.loop.training import prepare_sft

    base = settings.trainer.base_model
    if model_chat_template(base) is None:
        raise RuntimeError(f"{base} carries no chat template: the trainer cannot render samples")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    samples = [s for s in build(8, 0, seed=0).train if len(s.label) <= 1]
    prepared = prepare_sft(samples, tokenizer, settings.trainer.max_length, settings.model.chat_template_kwargs)
    if prepared.skipped:
        raise RuntimeError(f"the template cannot train sample conversations: {prepared.skipped}")
    family = model_family(base)
    if family is None:
        return "renders tool conversations; family not recognised: check the server's --tool-call-parser yourself"
    note = f"{family.name}: serve with --tool-call-parser {family.tool_parser}"
    if family.thinking is not None and "enable_thinking" not in settings.model.chat_template_kwargs:
        note += "; thinking follows the template's default: set model.chat_template_kwargs.enable_thinking"
    return note
