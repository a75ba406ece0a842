"""Talking to the serving vLLM about adapters: runtime LoRA loading."""

from __future__ import annotations

from pathlib import Path

import httpx

from looptool.kernel.errors import LoopToolError
from looptool.kernel.logs import get_logger
from looptool.kernel.names import check_token
from looptool.llm.client import ModelSettings

log = get_logger("looptool.serving")


class AdapterLoadError(LoopToolError, RuntimeError):
    pass


async def load_adapter(endpoint: ModelSettings, name: str, path: Path) -> None:
    """``POST /v1/load_lora_adapter`` (the server needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=true).

    Each round gets a new name rather than an in-place reload; a name the server already
    serves (a redelivered round) is not loaded again. The path must be visible to the server.
    """
    check_token("adapter", name)
    root = endpoint.base_url.rstrip("/")
    async with httpx.AsyncClient(
        timeout=endpoint.timeout, headers={"Authorization": f"Bearer {endpoint.key()}"}
    ) as client:
        served = await client.get(f"{root}/models")
        if served.status_code == 200 and any(m.get("id") == name for m in served.json().get("data", [])):
            log.info("adapter already served", adapter=name)  # a redelivered round: no second load
            return
        response = await client.post(f"{root}/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
    if response.status_code == 200:
        log.info("adapter loaded", adapter=name, path=str(path))
        return
    if response.status_code == 400 and "already" in response.text.lower():
        log.info("adapter already loaded", adapter=name)
        return
    raise AdapterLoadError(
        f"{root}/load_lora_adapter refused {name!r} ({path}): {response.status_code} {response.text[:300]}"
    )
