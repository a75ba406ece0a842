"""Seed data from a tool source, written where `looptool run` reads seed data: what
``looptool synthesize`` and a run config's ``tool_source`` both do — on the bus (the
synthesizer service's replicas share the attempts: :func:`request_synthesis`,
:func:`follow_synthesis`) or in this process (:func:`seed_from_tools`, ``--local``).

A tool source is ``mcp:<command or URL>``, ``openapi:<file>`` (``openapi:<file>@<base URL>`` to
run the calls against that API) or ``tools:<file>``.
"""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack
from pathlib import Path

from looptool.app.watch import watch_synthesis
from looptool.data.formats import encode_jsonl, write_samples
from looptool.data.samples import ToolSpec
from looptool.data.toolsources import (
    McpTools,
    OpenApiTools,
    ToolSourceError,
    file_tools,
    openapi_operations,
    openapi_tools,
)
from looptool.kernel import names
from looptool.kernel.bus import Bus
from looptool.kernel.names import check_token
from looptool.kernel.settings import SettingsError
from looptool.llm.client import ModelClients
from looptool.loop import keys
from looptool.loop.events import SynthesisJob, SynthesisRequested
from looptool.loop.settings import Settings
from looptool.loop.synthesis import Executor, JobLedger, Judge, Synthesized, decontamination_sets, synthesize

KINDS = ("mcp", "openapi", "tools")


def parse_source(source: str) -> tuple[str, str]:
    """``(kind, spec)`` of a tool source."""
    kind, _, spec = source.partition(":")
    if kind not in KINDS or not spec:
        raise ToolSourceError(
            f"tool source {source!r}: expected mcp:<command or URL>, openapi:<file>[@<URL>] or tools:<file>"
        )
    return kind, spec


async def _open(stack: AsyncExitStack, kind: str, spec: str) -> tuple[list[ToolSpec], Executor | None]:
    """The source's tools, and what runs their calls where the source can (None: nothing)."""
    if kind == "mcp":
        server = await stack.enter_async_context(McpTools(spec))
        return await server.tools(), server.call
    if kind == "openapi":
        document, _, base_url = spec.partition("@")
        tools = openapi_tools(document)
        if not base_url:  # calls run against the API only where the user names it
            return tools, None
        return tools, (await stack.enter_async_context(OpenApiTools(document, base_url))).call
    return file_tools(spec), None


async def seed_from_tools(
    source: str, settings: Settings, out: str | Path, clients: ModelClients | None = None
) -> Synthesized:
    """Synthesize from ``source`` in this process, with the generator (and judge) endpoints of
    ``settings``, into ``out`` (LoopTool samples), every rejected attempt into
    ``<out>.rejects.jsonl``: ``looptool synthesize --local``, no services needed."""
    kind, spec = parse_source(source)
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
            tools, execute = await _open(stack, kind, spec)
            print(f"{len(tools)} tools from {source}", file=sys.stderr)
            generator = clients.get(settings.generator_model)
            model = settings.generator_model.model
            evals = decontamination_sets(settings)
            result = await synthesize(tools, generator, model, config, source, execute, judge, evals)
    finally:
        if owned:
            await clients.close()
    write_samples(result.samples, out)
    Path(out).with_suffix(".rejects.jsonl").write_bytes(encode_jsonl(result.rejects))
    return result


async def request_synthesis(
    bus: Bus, job: str, source: str, count: int, seed: int, *, exist_ok: bool = False
) -> SynthesisRequested:
    """Resolve ``source``'s tools here (an MCP server is started to list them; a bad spec is
    refused naming the place), store them and request the job from the synthesizer service. A
    job name already in the log is refused (its events would mix) unless ``exist_ok``: then the
    stored request stands."""
    check_token("job", job)
    if count < 1:
        raise SettingsError(f"synthesis.count is {count}: a job needs at least one attempt")
    async for previous in bus.events(names.for_type(SynthesisRequested, job)):
        if exist_ok and isinstance(previous, SynthesisRequested):
            return previous
        raise ToolSourceError(f"synthesis job {job!r} already exists in the event log: choose another name")
    kind, spec = parse_source(source)
    async with AsyncExitStack() as stack:
        tools, _ = await _open(stack, kind, spec)
    execute, operations = "", None
    if kind == "mcp":
        execute = source
    elif kind == "openapi" and "@" in spec:
        document, _, base_url = spec.partition("@")
        execute = f"openapi:{base_url}"
        encoded = encode_jsonl(openapi_operations(document))
        operations = await bus.put_artifact(keys.synthesis_artifact(job, "operations"), encoded)
    tools_ref = await bus.put_artifact(keys.synthesis_artifact(job, "tools"), encode_jsonl(tools))
    request = SynthesisRequested(
        run=job,
        job=SynthesisJob(
            source=source, tools=tools_ref, count=count, seed=seed, execute=execute, operations=operations
        ),
    )
    await bus.publish(request)
    return request


async def follow_synthesis(bus: Bus, job: str, out: str | Path) -> JobLedger:
    """Show a job's progress until it finishes, then write its seed pool to ``out`` and the
    rejected attempts to ``<out>.rejects.jsonl``."""
    ledger = await watch_synthesis(bus, job)
    assert ledger.finished is not None
    Path(out).write_bytes(await bus.get_artifact(ledger.finished.pool))
    Path(out).with_suffix(".rejects.jsonl").write_bytes(await bus.get_artifact(ledger.finished.rejects))
    return ledger
