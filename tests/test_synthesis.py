"""Seed data from a team's own tools: tool sources (a real MCP server over stdio, an OpenAPI 3
document, tool files in the published layouts) and role-play synthesis verified in stages, the
generator scripted (:class:`~looptool.llm.testing.ScriptedModels`: the real client parses)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from looptool.data.samples import ToolCall
from looptool.data.toolsources import McpTools, ToolSourceError, file_tools, openapi_tools
from looptool.llm.client import ModelSettings
from looptool.llm.testing import ScriptedModels
from looptool.loop.settings import SynthesisSettings
from looptool.loop.synthesis import synthesize

SERVER = f"{sys.executable} {Path(__file__).with_name('mcp_weather_server.py')}"
FIXTURES = Path(__file__).parent / "fixtures" / "formats"


def test_an_mcp_servers_tools_are_listed_and_its_calls_run() -> None:
    async def main() -> tuple[Any, Any, Any]:
        async with McpTools(SERVER) as server:
            tools = await server.tools()
            ok = await server.call(ToolCall("get_forecast", {"city": "Oslo", "days": 2}))
            failed = await server.call(ToolCall("get_forecast", {"city": "Atlantis"}))
            return tools, ok, failed

    tools, ok, failed = anyio.run(main)
    forecast = {t.function.name: t for t in tools}["get_forecast"].function
    assert forecast.description == "The weather forecast for a city, day by day."
    assert forecast.parameters == {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"default": 3, "type": "integer"}},
        "required": ["city"],
    }
    assert (ok.ok, ok.text) == (True, "Oslo: sunny for 2 days")
    assert not failed.ok


OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "Pets", "version": "1"},
    "paths": {
        "/pets/{petId}": {
            "parameters": [{"$ref": "#/components/parameters/PetId"}],
            "get": {"operationId": "showPetById", "summary": "Info for a specific pet"},
            "put": {
                "operationId": "updatePet",
                "parameters": [{"name": "dryRun", "in": "query", "schema": {"type": "boolean"}}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}},
                },
            },
        },
        "/pets": {"get": {"summary": "List all pets", "parameters": [{"name": "limit", "in": "query"}]}},
    },
    "components": {
        "parameters": {"PetId": {"name": "petId", "in": "path", "required": True, "schema": {"type": "string"}}},
        "schemas": {
            "Pet": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "tag": {"$ref": "#/components/schemas/Tag"}},
            },
            "Tag": {"type": "string", "enum": ["dog", "cat"]},
        },
    },
}


def test_an_openapi_documents_operations_become_tools(tmp_path: Path) -> None:
    path = tmp_path / "pets.json"
    path.write_text(json.dumps(OPENAPI))
    tools = {t.function.name: t.function for t in openapi_tools(path)}
    assert set(tools) == {"showPetById", "updatePet", "get_pets"}
    update = tools["updatePet"].parameters
    assert update["required"] == ["petId", "body"]
    assert update["properties"]["body"]["properties"]["tag"] == {"type": "string", "enum": ["dog", "cat"]}
    assert update["properties"]["dryRun"]["type"] == "boolean"
    assert tools["get_pets"].description == "List all pets" and "limit" in tools["get_pets"].parameters["properties"]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda d: d["components"]["schemas"]["Tag"].update({"$ref": "#/components/schemas/Pet"}), "refers to itself"),
        (
            lambda d: d["paths"]["/pets/{petId}"]["put"]["requestBody"].update(content={"text/plain": {}}),
            "no JSON content",
        ),
        (lambda d: d.update(openapi="2.0"), "not an OpenAPI 3 document"),
    ],
)
def test_a_bad_openapi_document_is_refused_naming_the_operation(tmp_path: Path, change: Any, error: str) -> None:
    document = json.loads(json.dumps(OPENAPI))
    change(document)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ToolSourceError, match=error) as refused:
        openapi_tools(path)
    if "OpenAPI 3" not in error:
        assert "PUT /pets/{petId} (updatePet)" in str(refused.value)


def test_tool_files_in_the_published_layouts(tmp_path: Path) -> None:
    xlam = file_tools(FIXTURES / "xlam_card.json")  # rows with a tools list (xLAM's flat parameter maps)
    assert xlam and all(t.function.parameters.get("type") == "object" for t in xlam)
    openai = tmp_path / "tools.jsonl"
    openai.write_text(
        json.dumps({"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}})
        + "\n"
        + json.dumps({"name": "g", "description": "bare", "parameters": {"type": "object", "properties": {}}})
        + "\n"
    )
    assert [t.function.name for t in file_tools(openai)] == ["f", "g"]
    openai.write_text(json.dumps({"name": "h", "parameters": "not a schema"}) + "\n")
    with pytest.raises(ToolSourceError, match="tool h: "):
        file_tools(openai)


def scripted_roles(requests: dict[tuple[str, str], str], answers: dict[str, Any]) -> ScriptedModels:
    """The generator in both roles: as the user it writes the request scripted for the kind and
    target tool it is asked for; as the assistant (tools offered) it answers a request with
    scripted calls."""

    def answer(request: dict[str, Any]) -> Any:
        prompt = request["messages"][-1]["content"]
        if request.get("tools"):
            return answers[prompt]
        asked = json.loads(prompt.rsplit("<data>", 1)[1].split("</data>")[0])
        return requests[(asked["kind"], min(asked["target"], default=""))]

    return ScriptedModels(answer)


def test_synthesis_keeps_verified_samples_and_counts_every_rejection_by_stage() -> None:
    forecast, convert = "get_forecast", "convert_temperature"
    requests = {
        ("simple", forecast): "What's the forecast for Bergen for 4 days?",
        ("simple", convert): "What is 25 C in F?",
        ("multiple", forecast): "How is the weather going to be in Atlantis?",
        ("multiple", convert): "Convert 80 F to the other unit.",
        ("parallel", forecast): "Forecast for Oslo and for Tromso please",
        ("parallel", convert): "Convert 10 C and 30 C to F",
        ("parallel_multiple", convert): "Forecast for Oslo, and what is 20 C in F?",
        ("irrelevance", ""): "Book me a flight to Rome.",
    }
    answers = {
        requests[("simple", forecast)]: [ToolCall(forecast, {"city": "Bergen", "days": 4})],
        requests[("simple", convert)]: [ToolCall(convert, {"value": 25.0, "unit": "C"})],
        requests[("multiple", forecast)]: [ToolCall(forecast, {"city": "Atlantis"})],  # the server errs
        requests[("multiple", convert)]: [ToolCall(convert, {"value": 80.0, "unit": "F"})],
        requests[("parallel", forecast)]: [ToolCall(forecast, {"city": "Oslo"}), ToolCall(forecast, {"city": "Paris"})],
        requests[("parallel", convert)]: [ToolCall(convert, {"value": v, "unit": "C"}) for v in (10.0, 30.0)],
        requests[("parallel_multiple", convert)]: "I'll look that up for you.",  # no call where two are needed
        requests[("irrelevance", "")]: "I can't book flights with these tools.",
    }
    models = scripted_roles(requests, answers)
    shares = {"simple": 0.3, "multiple": 0.3, "parallel": 0.15, "parallel_multiple": 0.1, "irrelevance": 0.15}
    settings = SynthesisSettings(count=40, seed=1, distractors=1, categories=shares)
    endpoint = ModelSettings(model="generator")

    async def main() -> Any:
        async with McpTools(SERVER) as server:
            tools = await server.tools()
            return await synthesize(tools, models.get(endpoint), "generator", settings, "mcp:weather", server.call)

    result = anyio.run(main)
    kept = sorted((s.meta["synthesis"]["category"], s.label[0].name if s.label else "") for s in result.samples)
    assert kept == [
        ("irrelevance", ""),
        ("multiple", convert),
        ("parallel", convert),
        ("simple", convert),
        ("simple", forecast),
    ]  # one each: every repeat is a duplicate
    assert result.attempted == 40 and sum(result.rejected.values()) == 40 - len(result.samples)
    assert set(result.rejected) == {
        "execution: get_forecast returned an error",  # Atlantis
        "format: label_ungrounded",  # Paris is not in the request
        "format: calls none do not fit parallel_multiple",
        "dedup: duplicate",
    }
    simple = next(s for s in result.samples if s.label == [ToolCall(forecast, {"city": "Bergen", "days": 4})])
    assert simple.lineage.origin == "synthesis" and simple.lineage.source == "mcp:weather"
    assert simple.meta["synthesis"]["stages"] == {
        "format": "pass",
        "execution": "pass",
        "semantics": "not checked",
        "dedup": "pass",
        "contamination": "not checked",
    }
    assert simple.meta["synthesis"]["observations"] == ["Bergen: sunny for 4 days"]
    assert {r["stage"] for r in result.rejects} == {"execution", "format", "dedup"}
    assert len(models.requests) == 80  # a user turn and an assistant turn per attempt


def test_the_semantic_stage_keeps_what_a_quorum_of_judge_votes_says_answers() -> None:
    from looptool.loop.settings import JudgeSettings
    from looptool.loop.synthesis import Judge

    forecast = "get_forecast"
    requests = {("simple", forecast): "What's the forecast for Bergen for 4 days?", ("irrelevance", ""): "Hi there."}
    answers = {
        requests[("simple", forecast)]: [ToolCall(forecast, {"city": "Bergen", "days": 4})],
        requests[("irrelevance", "")]: "Hello! How can I help?",
    }
    generator = scripted_roles(requests, answers)
    replies = iter(["not JSON at all"])  # the first judge reply does not fit the schema: retried

    def judged(request: dict[str, Any]) -> str:
        reply = next(replies, None)
        if reply is not None:
            return reply
        asked = json.loads(request["messages"][-1]["content"].rsplit("<data>", 1)[1].split("</data>")[0])
        verdict = "answers" if asked["calls"] else "does_not_answer"  # this judge wants a call
        return json.dumps({"verdict": verdict, "analysis": "checked"})

    judge_models = ScriptedModels(judged)
    settings = SynthesisSettings(count=6, seed=3, categories={"simple": 0.5, "irrelevance": 0.5})
    judge = Judge(judge_models.get(ModelSettings(model="judge")), "judge", JudgeSettings(votes=3, quorum=2))

    async def main() -> Any:
        tools = [t for t in await tools_of_the_server() if t.function.name == forecast]
        return await synthesize(tools, generator.get(ModelSettings(model="g")), "g", settings, "test", None, judge)

    result = anyio.run(main)
    assert [s.meta["synthesis"]["category"] for s in result.samples] == ["simple"]
    kept = result.samples[0].meta["synthesis"]
    assert kept["votes"] == ["answers"] * 3 and kept["stages"]["semantics"] == "pass"
    assert kept["stages"]["execution"] == "not run"
    assert result.rejected.get("semantics: does not answer the request", 0) > 0
    assert set(result.rejected) <= {"semantics: does not answer the request", "dedup: duplicate"}
    assert all(r["response_format"]["json_schema"]["name"] == "semantic_reply" for r in judge_models.requests)


async def tools_of_the_server() -> list[Any]:
    async with McpTools(SERVER) as server:
        return await server.tools()


def test_calls_run_against_the_api_an_openapi_document_describes(tmp_path: Path) -> None:
    """A small Pets API served locally: a known pet answers 200, an unknown one 404 (an error
    result), an update carries its JSON body and query flag."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from looptool.data.toolsources import OpenApiTools

    seen: list[tuple[str, str, bytes]] = []

    class Pets(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.command, self.path, body))
            known = self.path.split("?")[0] in ("/v1/pets/rex", "/v1/pets/a%2Fb")
            self.send_response(200 if known else 404)
            self.end_headers()
            self.wfile.write(b'{"name": "rex"}' if known else b'{"error": "no such pet"}')

        do_GET = do_PUT = _answer

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Pets)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    path = tmp_path / "pets.json"
    path.write_text(json.dumps(OPENAPI))

    async def main() -> list[Any]:
        async with OpenApiTools(path, f"http://127.0.0.1:{httpd.server_port}/v1") as api:
            return [
                await api.call(ToolCall("showPetById", {"petId": "rex"})),
                await api.call(ToolCall("showPetById", {"petId": "nobody"})),
                await api.call(ToolCall("updatePet", {"petId": "a/b", "dryRun": True, "body": {"name": "Rex"}})),
            ]

    try:
        found, missing, updated = anyio.run(main)
    finally:
        httpd.shutdown()
    assert found.ok and found.text == 'HTTP 200: {"name": "rex"}'
    assert not missing.ok and missing.text.startswith("HTTP 404")
    assert updated.ok and seen[-1] == ("PUT", "/v1/pets/a%2Fb?dryRun=true", b'{"name":"Rex"}')


CITIES = [
    "Bergen",
    "Lisbon",
    "Kyoto",
    "Nairobi",
    "Quito",
    "Tallinn",
    "Hobart",
    "Reno",
    "Lagos",
    "Turku",
    "Perth",
    "Cusco",
]
FORECASTS = [
    "What's the weather going to be like in {c} over the next {n} days?",
    "{c}: forecast, {n} days please",
    "I'm travelling to {c} soon. Give me a {n}-day outlook.",
    "Could you check {c} for me ({n} days)?",
]
CONVERSIONS = [
    "Turn {n} degrees C into Fahrenheit.",
    "What is {n} C in F?",
    "My thermometer says {n} C. Fahrenheit?",
    "Convert {n} Celsius, please.",
]


def varied_generator() -> ScriptedModels:
    """A generator that writes varied, right samples for the weather server's tools: as the user
    it picks a city, a number and a phrasing from the request's seed (a multi-turn follow-up asks
    for the next city); as the assistant it reads them back into the call."""
    import re

    def answer(request: dict[str, Any]) -> Any:
        prompt = request["messages"][-1]["content"]
        if request.get("tools"):
            number = int(re.search(r"\d+", prompt).group())  # type: ignore[union-attr]
            city = next((c for c in CITIES if c in prompt), None)
            if city is not None:
                return [ToolCall("get_forecast", {"city": city, "days": number})]
            return [ToolCall("convert_temperature", {"value": float(number), "unit": "C"})]
        asked = json.loads(prompt.rsplit("<data>", 1)[1].split("</data>")[0])
        if "conversation" in asked:  # the follow-up of a multi-turn sample: another city, after the first's
            first = asked["conversation"][0]["content"]
            city = next((c for c in CITIES if c in first), None)
            if city is None:
                return f"Thanks. And {len(first) % 7 * 5 + 10} C?"
            return f"Thanks. And {CITIES[(CITIES.index(city) + 1) % len(CITIES)]} for {len(first) % 5 + 2} days?"
        seed = request["seed"]
        if asked["target"] == ["get_forecast"]:
            return FORECASTS[(seed // 3) % 4].format(c=CITIES[seed % len(CITIES)], n=2 + seed % 7)
        return CONVERSIONS[(seed // 3) % 4].format(n=5 * (2 + seed % 7))

    return ScriptedModels(answer)


async def synthesized_from_the_server(count: int, seed: int) -> Any:
    settings = SynthesisSettings(count=count, seed=seed, categories={"simple": 1.0})
    async with McpTools(SERVER) as server:
        tools = await server.tools()
        client = varied_generator().get(ModelSettings(model="generator"))
        return await synthesize(tools, client, "generator", settings, "mcp:weather", server.call)


def test_multi_turn_samples_run_their_first_calls_and_missing_values_are_asked_for() -> None:
    """A multi-turn sample: the first request, its call run on the MCP server, the result, a
    follow-up — the label answers the follow-up; a request missing a required value is a sample
    whose right answer is to ask (no call)."""

    def answer(request: dict[str, Any]) -> Any:
        prompt = request["messages"][-1]["content"]
        if request.get("tools"):
            turns = request["messages"]
            if prompt == "What's the forecast?":
                return "Which city would you like the forecast for?"
            if len(turns) == 1:
                return [ToolCall("get_forecast", {"city": "Oslo", "days": 2})]
            return [ToolCall("get_forecast", {"city": "Bergen", "days": 3})]
        if "later in a conversation" in prompt:  # the follow-up prompt
            assert "Oslo: sunny for 2 days" in prompt  # the real result is in the conversation
            return "Thanks! And Bergen for 3 days?"
        kind = json.loads(prompt.rsplit("<data>", 1)[1].split("</data>")[0])["kind"]
        return "Forecast for Oslo for 2 days please" if kind == "multi_turn" else "What's the forecast?"

    settings = SynthesisSettings(count=6, seed=2, categories={"multi_turn": 0.5, "missing_parameter": 0.5})

    async def main() -> Any:
        async with McpTools(SERVER) as server:
            tools = [t for t in await server.tools() if t.function.name == "get_forecast"]
            client = ScriptedModels(answer).get(ModelSettings(model="g"))
            return await synthesize(tools, client, "g", settings, "mcp:weather", server.call)

    result = anyio.run(main)
    by_category = {s.meta["synthesis"]["category"]: s for s in result.samples}
    assert set(by_category) == {"multi_turn", "missing_parameter"}, result.summary()
    multi = by_category["multi_turn"]
    assert [m.role for m in multi.messages] == ["user", "assistant", "tool", "user"]
    assert multi.messages[2].content == "Oslo: sunny for 2 days"
    assert multi.label == [ToolCall("get_forecast", {"city": "Bergen", "days": 3})]
    assert multi.meta["synthesis"]["observations"] == ["Bergen: sunny for 3 days"]
    asked = by_category["missing_parameter"]
    assert asked.label == [] and asked.messages[-1].content == "What's the forecast?"
    assert set(result.rejected) == {"dedup: duplicate"}


def test_a_request_the_generator_refuses_costs_that_attempt_only() -> None:
    import httpx
    import openai

    def answer(request: dict[str, Any]) -> Any:
        if request.get("tools"):
            return [ToolCall("get_forecast", {"city": "Bergen", "days": 4})]
        if request["seed"] % 2:  # every other request: the server's 400 for a prompt too long
            response = httpx.Response(400, request=httpx.Request("POST", "http://generator/v1/chat/completions"))
            raise openai.BadRequestError("maximum context length exceeded", response=response, body=None)
        return "What's the forecast for Bergen for 4 days?"

    settings = SynthesisSettings(count=4, seed=7, categories={"simple": 1.0})

    async def main() -> Any:
        tools = [t for t in await tools_of_the_server() if t.function.name == "get_forecast"]
        return await synthesize(tools, ScriptedModels(answer).get(ModelSettings(model="g")), "g", settings, "test")

    result = anyio.run(main)
    refused = [reason for reason in result.rejected if reason.startswith("model: a request refused")]
    assert len(result.samples) == 1 and refused and "maximum context length" in refused[0]
    assert sum(result.rejected.values()) == 3  # 2 refused, 1 duplicate


def test_a_tool_source_becomes_seed_data_where_a_run_reads_it(tmp_path: Path) -> None:
    """What `looptool synthesize` and a run config's tool_source do: synthesize from the source
    with the settings' endpoints, write the samples (and the rejected attempts) for the run."""
    from looptool.app.seeding import seed_from_tools
    from looptool.data.formats import import_file
    from looptool.loop.runconfig import RunConfig
    from looptool.loop.settings import Settings

    settings = Settings()
    settings.synthesis = SynthesisSettings(count=12, seed=4, categories={"simple": 1.0}, semantics=False)
    out = tmp_path / "run.seed.jsonl"
    result = anyio.run(seed_from_tools, f"mcp:{SERVER}", settings, out, varied_generator())
    written = import_file(out, "auto")
    assert [s.id for s in written.samples] == [s.id for s in result.samples] and written.errors == []
    assert len(out.with_suffix(".rejects.jsonl").read_text().splitlines()) == 12 - len(result.samples)
    assert RunConfig(run="r", tool_source=f"mcp:{SERVER}").tool_source  # a run config may name one
    with pytest.raises(ToolSourceError, match="expected mcp:"):
        anyio.run(seed_from_tools, "ftp:somewhere", settings, out)


def test_a_sample_that_leaks_into_an_eval_set_is_dropped_and_counted() -> None:
    """The contamination stage is lint's test against the evaluator's sets: a synthesized
    request that an eval item asks too is dropped; an eval set about other things drops nothing."""
    from looptool.data.samples import FunctionSpec, Message, Sample, ToolSpec
    from looptool.loop.events import SynthesisAttempt
    from looptool.loop.synthesis import settle

    result = anyio.run(synthesized_from_the_server, 12, 4)
    attempts = [SynthesisAttempt(attempt=i, category="simple", sample=s) for i, s in enumerate(result.samples)]
    leaked = result.samples[3]
    other_tool = ToolSpec(FunctionSpec("book_table", "Book a restaurant table."))
    eval_item = Sample(id="e-1", tools=[other_tool], messages=leaked.messages, label=[])
    unrelated = Sample(id="e-2", tools=[other_tool], messages=[Message(role="user", content="Book a table for two.")])

    dirty = settle(attempts, len(attempts), 0.85, {"bfcl:simple": [eval_item]})
    assert leaked.id not in {s.id for s in dirty.samples}
    assert dirty.rejected["contamination: overlaps an eval set"] >= 1
    assert len(dirty.samples) + sum(dirty.rejected.values()) == len(attempts)
    assert all(s.meta["synthesis"]["stages"]["contamination"] == "pass" for s in dirty.samples)
    clean = settle(attempts, len(attempts), 0.85, {"bfcl:simple": [unrelated]})
    assert [s.id for s in clean.samples] == [s.id for s in result.samples]


def test_settings_without_a_category_are_refused_before_the_synthesizer_starts() -> None:
    from looptool.kernel.settings import SettingsError
    from looptool.loop.settings import Settings
    from looptool.services import synthesizer

    settings = Settings()
    settings.synthesis.categories = {"simple": 0.0, "no_such_kind": 1.0}
    assert synthesizer.service.check is not None
    with pytest.raises(SettingsError, match="synthesis.categories"):
        synthesizer.service.check(settings)


def synthesis_env(generator_url: str) -> dict[str, str]:
    """The synthesizer service's settings in the loop tests: the scripted generator at
    ``generator_url``, 24 attempts, the weather server's calls allowed."""
    return {
        "LOOPTOOL_GENERATOR_MODEL__BASE_URL": generator_url,
        "LOOPTOOL_SYNTHESIS__COUNT": "24",
        "LOOPTOOL_SYNTHESIS__SEED": "5",
        "LOOPTOOL_SYNTHESIS__CATEGORIES": '{"simple": 0.8, "multi_turn": 0.2}',
        "LOOPTOOL_SYNTHESIS__SEMANTICS": "false",
        "LOOPTOOL_SYNTHESIS__ALLOW_EXECUTION": json.dumps([f"mcp:{SERVER}"]),
    }


def run_from_the_server(run: str, workdir: Path, env: dict[str, str], cli: Any) -> tuple[Any, Any]:
    """`looptool run` on a config naming only the weather server as its tool source, as a user
    types it (``cli``: the bus settings of the CLI's identity); the CLI's result and the run's
    ledger as the log stands after it."""
    import os
    import subprocess

    from looptool.app.runs import fold_run
    from looptool.kernel.bus import Bus

    config = workdir / "run.toml"
    config.write_text(f'[run]\nrun = "{run}"\ntool_source = "mcp:{SERVER}"\nrounds = 1\nwait_for_eval = true\n')
    user_env = {**os.environ, **env, "LOOPTOOL_NATS__URL": cli.url}
    if cli.credentials_dir:
        user_env["LOOPTOOL_NATS__CREDENTIALS_DIR"] = cli.credentials_dir
    user = subprocess.run(
        [sys.executable, "-m", "looptool", "run", str(config)], env=user_env, capture_output=True, timeout=1500
    )
    assert user.returncode == 0, user.stderr.decode()[-3000:]

    async def folded() -> Any:
        bus = await Bus.connect(cli)
        try:
            return await fold_run(bus, run)
        finally:
            await bus.close()

    return user, anyio.run(folded)
