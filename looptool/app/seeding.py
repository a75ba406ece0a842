"""Seed data from a tool source, written where `looptool run` reads seed data: what
``looptool synthesize`` and a run config's ``tool_source`` both do.

A tool source is ``mcp:<command or URL>``, ``openapi:<file>`` (``openapi:<file>@<base URL>`` to
run the calls against that API) or ``tools:<file>``.
"""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import msgspec

from looptool.data.formats import write_samples
from looptool.data.toolsources import McpTools, OpenApiTools, ToolSourceError, file_tools, openapi_tools
from looptool.llm.client import ModelClients
from looptool.loop.settings import Settings
from looptool.loop.synthesis import Judge, Synthesized, synthesize

KINDS = ("mcp", "openapi", "tools")
_encoder = msgspec.json.Encoder()


async def seed_from_tools(
    source: str, settings: Settings, out: str | Path, clients: ModelClients | None = None
) -> Synthesized:
    """Synthesize from ``source`` with the generator (and judge) endpoints of ``settings`` into
    ``out`` (LoopTool samples), every rejected attempt into ``<out>.rejects.jsonl``."""
    kind, _, spec = source.partition(":")
    if kind not in KINDS or not spec:
        raise ToolSourceError(
            f"tool source {source!r}: expected mcp:<command or URL>, openapi:<file>[@<URL>] or tools:<file>"
        )
    owned = clients is None
    clients = clients or ModelClients()
    config = settings.synthesis
    judge = (
        Judge(clients.get(settings.judge_model), settings.judge_model.model, settings.judge)
        if config.semantics
        else None
    )
    try:
        async with AsyncExitStack() as stack:
            execute: Any = None
            if kind == "mcp":
                server = await stack.enter_async_context(McpTools(spec))
                tools, execute = await server.tools(), server.call
            elif kind == "openapi":
                document, _, base_url = spec.partition("@")
                tools = openapi_tools(document)
                if base_url:  # calls run against the API only where the user names it
                    execute = (await stack.enter_async_context(OpenApiTools(document, base_url))).call
            else:
                tools = file_tools(spec)
            print(f"{len(tools)} tools from {source}", file=sys.stderr)
            generator = clients.get(settings.generator_model)
            result = await synthesize(tools, generator, settings.generator_model.model, config, source, execute, judge)
    finally:
        if owned:
            await clients.close()
    write_samples(result.samples, out)
    Path(out).with_suffix(".rejects.jsonl").write_bytes(b"".join(_encoder.encode(r) + b"\n" for r in result.rejects))
    return result
