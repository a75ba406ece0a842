"""Synthesis on the bus: the synthesizer service's replicas share a job's attempts and settle it
as one process would, every attempt ends in exactly one outcome (also when its work fails for
good, and when a replica is killed mid-job), and calls run only where the service allows.

The generator is scripted (the real client parses its replies: in memory through
:class:`~looptool.llm.testing.ScriptedModels`, across processes through a scripted HTTP
endpoint); the tools are a real MCP server written with the SDK."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from scripted_openai import ScriptedServer
from test_synthesis import SERVER, varied_generator

from looptool.app import registry
from looptool.app.runs import run_events
from looptool.app.seeding import request_synthesis
from looptool.app.up import Topology
from looptool.data.formats import import_file
from looptool.data.toolsources import McpTools
from looptool.kernel.bus import Bus
from looptool.kernel.settings import RuntimeSettings
from looptool.kernel.testing import StubBus, StubRunner
from looptool.llm.client import ModelClients, ModelSettings
from looptool.loop.events import SynthesisFinished, SynthesisResult
from looptool.loop.settings import Settings, SynthesisSettings
from looptool.loop.synthesis import JobLedger, synthesize
from looptool.services import synthesizer

SOURCE = f"mcp:{SERVER}"
SHARES = {"simple": 0.6, "multi_turn": 0.2, "irrelevance": 0.2}


def settings(**synthesis: Any) -> Settings:
    s = Settings(runtime=RuntimeSettings(max_deliver=2))
    s.synthesis = SynthesisSettings(
        **({"categories": SHARES, "semantics": False, "allow_execution": [SOURCE]} | synthesis)
    )
    return s


def in_process(count: int, seed: int) -> Any:
    """The same job in one process: what the service must settle to."""

    async def main() -> Any:
        config = settings().synthesis
        config.count, config.seed = count, seed
        async with McpTools(SERVER) as server:
            tools = await server.tools()
            client = varied_generator().get(ModelSettings(model="generator"))
            return await synthesize(tools, client, "generator", config, SOURCE, server.call)

    return anyio.run(main)


async def on_stub_bus(
    count: int, seed: int, models: ModelClients, replicas: int = 2, **synthesis: Any
) -> tuple[StubBus, StubRunner]:
    bus = StubBus()
    runner = StubRunner(
        bus, settings(**synthesis), synthesizer.service, replicas=replicas, resources={ModelClients: models}
    )
    await request_synthesis(bus, "job", SOURCE, count, seed)  # type: ignore[arg-type]  # the stub bus
    await runner.run_until_idle()
    await runner.close()
    return bus, runner


def test_replicas_share_a_job_and_settle_it_as_one_process_would() -> None:
    expected = in_process(24, 3)
    bus, _runner = anyio.run(on_stub_bus, 24, 3, varied_generator())
    results = bus.of_type(SynthesisResult, "job")
    assert sorted(r.outcome.attempt for r in results) == list(range(24))  # one outcome per attempt
    (finished,) = bus.of_type(SynthesisFinished, "job")  # settled once, by one of the two replicas
    pool = import_file_bytes(anyio.run(bus.get_artifact, finished.pool))
    assert [s.id for s in pool] == [s.id for s in expected.samples]
    assert finished.rejected == expected.rejected and finished.kept == len(expected.samples) > 0
    multi = [s for s in pool if s.meta["synthesis"]["category"] == "multi_turn"]
    assert multi and all(s.messages[2].role == "tool" for s in multi)  # the calls ran on the MCP server


def folded(bus: StubBus) -> JobLedger:
    ledger = JobLedger("job")
    for _, event in bus.log:
        if event is not None and event.run == "job":
            ledger.apply(event)
    return ledger


def import_file_bytes(data: bytes) -> list[Any]:
    from looptool.data.samples import Sample

    return [msgspec.json.decode(line, type=Sample) for line in data.splitlines() if line.strip()]


def test_an_attempt_that_fails_for_good_is_its_outcome_and_the_job_still_settles() -> None:
    answer = varied_generator().answer

    def failing(request: dict[str, Any]) -> Any:
        if request.get("seed") == 5 * 100_003 + 2:  # attempt 2's user turn, on every delivery
            raise RuntimeError("the generator's server fell over")
        return answer(request)

    from looptool.llm.testing import ScriptedModels

    bus, runner = anyio.run(on_stub_bus, 8, 5, ScriptedModels(failing))
    (letter,) = runner.dead_letters
    assert letter.stage == "synthesis.task" and letter.sample_id == "attempt-2"
    (finished,) = bus.of_type(SynthesisFinished, "job")
    assert finished.attempted == 8 and finished.kept + sum(finished.rejected.values()) == 8
    assert [reason for reason in finished.rejected if reason.startswith("error:")] == [
        "error: RuntimeError: the generator's server fell over"
    ]


def test_calls_run_only_where_the_services_settings_allow() -> None:
    bus, _runner = anyio.run(on_stub_bus, 6, 3, varied_generator(), 1)
    allowed = folded(bus)
    assert allowed.unrun_calls == 0
    bus, _runner = anyio.run(lambda: on_stub_bus(6, 3, varied_generator(), 1, allow_execution=[]))
    refused = folded(bus)
    (finished,) = bus.of_type(SynthesisFinished, "job")
    assert finished.kept and refused.unrun_calls == finished.kept  # kept, but nothing ran
    pool = import_file_bytes(anyio.run(bus.get_artifact, finished.pool))
    assert all(s.meta["synthesis"]["stages"]["execution"] == "not run" for s in pool)
    assert not any(s.meta["synthesis"]["category"] == "multi_turn" for s in pool)


@pytest.mark.timeout(600)
def test_synthesize_on_a_secure_bus_survives_a_killed_replica(tmp_path: Path) -> None:
    """`looptool synthesize` as a user types it, against two synthesizer processes on a secure
    embedded NATS; one replica is SIGKILLed mid-job. The job settles with every attempt once,
    to the pool one process makes."""
    count, seed = 30, 4
    expected = in_process(count, seed)
    with ScriptedServer(varied_generator().answer, delay=0.15) as generator:
        env = {
            "LOOPTOOL_GENERATOR_MODEL__BASE_URL": generator.base_url,
            "LOOPTOOL_SYNTHESIS__CATEGORIES": msgspec.json.encode(SHARES).decode(),
            "LOOPTOOL_SYNTHESIS__SEMANTICS": "false",
            "LOOPTOOL_SYNTHESIS__ALLOW_EXECUTION": msgspec.json.encode([SOURCE]).decode(),
            "LOOPTOOL_CURATOR__LEASE": "5",
            "LOOPTOOL_CURATOR__CHECK_EVERY": "1",
            "LOOPTOOL_RUNTIME__CONCURRENCY": "2",
        }
        replicas = dict.fromkeys(registry.service_names(), 0) | {"synthesizer": 2}
        with Topology(tmp_path / "topology", replicas=replicas, env=env, quiet=True) as topology:
            cli = topology.client_settings()
            out = tmp_path / "seed.jsonl"
            command = [sys.executable, "-m", "looptool", "synthesize", "--mcp", SERVER, "--out", str(out)]
            command += ["--count", str(count), "--seed", str(seed), "--job", "killed"]
            user_env = {**os.environ, **env, "LOOPTOOL_NATS__URL": cli.url}
            user_env["LOOPTOOL_NATS__CREDENTIALS_DIR"] = cli.credentials_dir or ""
            user = subprocess.Popen(command, env=user_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

            async def log() -> JobLedger:
                ledger = JobLedger("killed")
                bus = await Bus.connect(cli, name="test")
                try:
                    async for event in run_events(bus, "killed"):
                        ledger.apply(event)
                    return ledger
                finally:
                    await bus.close()

            deadline = time.monotonic() + 300
            while len(anyio.run(log).outcomes) < 6 and time.monotonic() < deadline and user.poll() is None:
                time.sleep(0.5)
            topology.kill("synthesizer-0")  # mid-job: attempts in flight, more to come
            at_kill = len(anyio.run(log).outcomes)
            stdout, stderr = user.communicate(timeout=400)
            job = anyio.run(log)
            watched = subprocess.run(  # a late watcher replays the job's progress
                [sys.executable, "-m", "looptool", "watch", "killed"], env=user_env, capture_output=True, timeout=120
            )
    assert user.returncode == 0, stderr.decode()[-3000:]
    assert 6 <= at_kill < count
    written = import_file(out, "auto")
    assert [s.id for s in written.samples] == [s.id for s in expected.samples]
    rejects = out.with_suffix(".rejects.jsonl").read_text().splitlines()
    assert len(written.samples) + len(rejects) == count
    assert f"{len(expected.samples)} samples" in stdout.decode()
    assert "finished, 30 attempted" in stderr.decode() and "finished, 30 attempted" in watched.stderr.decode()
    assert job.finished is not None and job.finished.attempted == count and job.finished.kept == len(written.samples)
