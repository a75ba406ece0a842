"""Importers against rows in the layouts the datasets publish (see fixtures/formats/README.md):
every row imports, every imported label passes its own tools, and the quirks of each layout
(flat parameter maps, Python literals, function_call turns, spaced tool names) are read right."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from looptool.data.checker import check_sample, label_problem
from looptool.data.formats import detect_format, import_file
from looptool.data.formats._params import python_type_schema
from looptool.data.samples import ToolCall

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
CARDS = {
    "xlam_card.json": ("xlam", 4, 4),  # file: (format, rows, samples)
    "hermes_v1_card.json": ("hermes", 2, 3),
    "sharegpt_llamafactory_card.json": ("sharegpt", 2, 3),
    "toolace_card.json": ("toolace", 2, 3),
}


@pytest.mark.parametrize("name", CARDS)
def test_published_layouts_import_whole_and_every_label_passes_its_tools(name: str) -> None:
    fmt, rows, samples = CARDS[name]
    assert detect_format(FIXTURES / name)[0] == fmt
    report = import_file(FIXTURES / name, "auto")
    assert report.errors == [] and report.rows == rows and len(report.samples) == samples
    for sample in report.samples:
        assert label_problem(sample) is None
        assert check_sample(sample, sample.label).valid


def _tool(report, name: str) -> dict:
    return next(t.function.parameters for s in report.samples for t in s.tools if t.function.name == name)


def test_xlam_flat_parameter_maps_become_json_schema() -> None:
    report = import_file(FIXTURES / "xlam_card.json", "xlam")
    giveaways = _tool(report, "live_giveaways_by_type")  # a parameter named "type"
    assert giveaways["properties"]["type"]["type"] == "string" and giveaways["required"] == []
    rounding = _tool(report, "round_number")
    assert rounding["properties"] == {
        "value": {"type": "number", "description": "The number."},
        "decimals": {"type": "integer", "description": "Decimal places.", "default": 0},
    }
    assert rounding["required"] == ["value"]
    comments = _tool(report, "video_comments")
    assert comments["properties"]["filters"]["type"] == "object" and comments["required"] == []
    # A correct prediction now passes; before, every one failed on "Unexpected parameter: 'type'".
    first = report.samples[0]
    assert check_sample(first, [ToolCall("live_giveaways_by_type", {"type": "game"}), first.label[0]]).valid


@pytest.mark.parametrize(
    ("text", "schema", "optional"),
    [
        ("str", {"type": "string"}, False),
        ("int, optional", {"type": "integer"}, True),
        ("List[int]", {"type": "array", "items": {"type": "integer"}}, False),
        ("Optional[List[str]]", {"type": "array", "items": {"type": "string"}}, True),
        ("Tuple[int, int]", {"type": "array"}, False),
        ("Dict[str, Any], optional", {"type": "object"}, True),
        ("Callable", {}, False),
    ],
)
def test_python_type_strings(text: str, schema: dict, optional: bool) -> None:
    assert python_type_schema(text) == (schema, optional)


def test_xlam_label_failing_its_tools_is_rejected_with_the_call_named(tmp_path: Path) -> None:
    rows = json.loads((FIXTURES / "xlam_card.json").read_text())
    rows[2]["answers"] = json.dumps([{"name": "video_comments", "arguments": {"video_id": "v", "order": "new"}}])
    rows[3]["answers"] = json.dumps([{"name": "video_comment", "arguments": {}}])
    (tmp_path / "x.json").write_text(json.dumps(rows))
    report = import_file(tmp_path / "x.json", "xlam")
    assert [str(e).split(": ", 1)[1] for e in report.errors] == [
        "label: video_comments: fails its own tools: Unexpected parameter: 'order'. "
        "(simple_function_checker:unexpected_param)",
        "label[0].name: calls 'video_comment', which is not among the offered tools "
        "['is_anagram', 'merge_dictionaries']",
    ]
    assert [e.line for e in report.errors] == [3, 4]
    kept = import_file(tmp_path / "x.json", "xlam", keep_suspect=True)
    assert kept.errors == [] and kept.suspect == 2 and len(kept.samples) == 4
    assert "Unexpected parameter: 'order'" in kept.samples[2].meta["suspect_label"]
    assert "2 kept with a suspect label" in kept.summary()


def test_hermes_python_literals_are_parsed_never_evaluated(tmp_path: Path) -> None:
    report = import_file(FIXTURES / "hermes_v1_card.json", "hermes")
    feed = report.samples[0].label[0]
    assert feed == ToolCall(
        "get_camera_live_feed", {"camera_id": "front_door", "stream_quality": "1080p", "audio": True}
    )
    assert _tool(report, "get_camera_live_feed")["properties"]["stream_quality"]["enum"] == ["720p", "1080p", "4k"]
    # The multi-turn row: one sample per call turn; the summary after the tool result is none.
    assert [len(s.messages) for s in report.samples] == [1, 1, 5]
    rows = json.loads((FIXTURES / "hermes_v1_card.json").read_text())
    rows[0]["conversations"][2]["value"] = (
        "<tool_call>\n{'arguments': __import__('os').system('touch PWNED'), 'name': 'x'}\n</tool_call>"
    )
    (tmp_path / "h.json").write_text(json.dumps(rows[:1]))
    bad = import_file(tmp_path / "h.json", "hermes")
    assert bad.samples == [] and bad.errors[0].field == "conversations[2].value"
    assert "nor a Python literal" in bad.errors[0].reason and not Path("PWNED").exists()


def test_sharegpt_every_call_turn_is_a_sample_and_observations_are_tool_turns() -> None:
    report = import_file(FIXTURES / "sharegpt_llamafactory_card.json", "sharegpt")
    password, rates, refusal = report.samples
    assert password.messages[0].role == "system" and password.label[0].arguments == {
        "length": 12,
        "include_symbols": True,
    }
    assert [m.role for m in rates.messages] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert rates.messages[3].content == '{"password": "4&7j#9@1Q6*"}'
    assert [c.arguments["target"] for c in rates.label] == ["EUR", "JPY"] and rates.category == "parallel_multiple"
    assert refusal.label == [] and refusal.category == "irrelevance"


def test_sharegpt_unknown_speaker_is_named(tmp_path: Path) -> None:
    rows = json.loads((FIXTURES / "sharegpt_llamafactory_card.json").read_text())
    rows[0]["conversations"][1]["from"] = "function_response"
    (tmp_path / "s.json").write_text(json.dumps(rows))
    report = import_file(tmp_path / "s.json", "sharegpt")
    assert [str(e).split(": ", 1)[1] for e in report.errors] == [
        "conversations[1].from: unknown speaker 'function_response' (human, gpt, function_call, observation)"
    ]


def test_toolace_spaced_names_and_bfcl_types() -> None:
    report = import_file(FIXTURES / "toolace_card.json", "toolace")
    trends, clarify, roof = report.samples
    assert [c.name for c in trends.label] == ["Get Market Trends", "calculateRoofArea"]
    assert _tool(report, "Get Market Trends")["type"] == "dict"
    assert clarify.label == [] and clarify.messages[-1].content == "Compute the area of my roof."
    assert roof.label[0].arguments["corners"] == [[0, 0], [10, 6]]  # tuples, as JSON would have them


def test_gzipped_files_import_the_same(tmp_path: Path) -> None:
    for name in CARDS:
        packed = tmp_path / f"{name}.gz"
        packed.write_bytes(gzip.compress((FIXTURES / name).read_bytes()))
        unpacked = import_file(FIXTURES / name, "auto").samples
        assert [(s.id, s.label) for s in import_file(packed, "auto").samples] == [(s.id, s.label) for s in unpacked]


def test_cli_import_says_which_format_it_chose(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "looptool",
            "import",
            str(FIXTURES / "xlam_card.json"),
            "--out",
            str(tmp_path / "o.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "format: xlam (fields query, tools, answers (xLAM / APIGen))" in done.stderr
    assert "4 rows: 4 imported, 0 rejected" in done.stderr
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 4


ACEBENCH = FIXTURES / "acebench_card"


def test_acebench_layout_with_its_possible_answers() -> None:
    (parallel,) = import_file(ACEBENCH / "data_normal_single_turn_parallel_function.json", "auto").samples
    # name_1 / name_2: one function called twice; "arguments" is the schema's name in some rows.
    assert [c.name for c in parallel.label] == ["HomeLighting_setScene", "HomeLighting_setScene", "Weather_getForecast"]
    assert parallel.tools[0].function.parameters["required"] == ["room", "brightness"]
    assert parallel.meta["acebench_category"] == "normal_single_turn_parallel_function"
    adjust = import_file(ACEBENCH / "data_normal_multi_turn_user_adjust.json", "acebench")
    first, second = adjust.samples
    assert [m.role for m in first.messages] == ["user", "assistant", "user"]  # "system:" turns are the assistant's
    assert second.label == [ToolCall("Weather_getForecast", {"city": "Braga", "days": 5})]
    assert second.meta["acebench_ground_truth"][1] == {"Weather_getForecast": {"city": "Braga"}}
    for sample in [parallel, first, second]:
        assert label_problem(sample) is None
    (irrelevant,) = import_file(ACEBENCH / "data_special_irrelevant.json", "acebench").samples
    assert irrelevant.label == [] and irrelevant.category == "irrelevance"
    assert irrelevant.meta["acebench_ground_truth"].startswith("Due to the limitations")
    agent = import_file(ACEBENCH / "data_agent_multi_turn.json", "acebench")
    assert agent.samples == [] and [e.reason for e in agent.errors] == [
        "agent_multi_turn: agent tasks are played by the evaluator, not imported as samples"
    ]


@pytest.mark.parametrize("name", CARDS)
def test_parquet_files_and_datasets_folders_import_the_same(tmp_path: Path, name: str) -> None:
    """As people hold these datasets: a Parquet file (the Hub's own conversion) and a folder
    ``datasets`` saved, each with the published rows as they are."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = json.loads((FIXTURES / name).read_text())
    as_json = [(s.id, s.label, s.tools) for s in import_file(FIXTURES / name, "auto").samples]
    parquet = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    for path in (parquet, folder):
        assert detect_format(path)[0] == CARDS[name][0]
        report = import_file(path, "auto")
        assert report.errors == [] and report.rows == len(rows)
        assert [(s.id, s.label, s.tools) for s in report.samples] == as_json
        assert report.samples[0].lineage.source == f"{path}:1"  # the row, by its index


def test_a_broken_parquet_file_or_a_folder_of_several_splits_is_named(tmp_path: Path) -> None:
    import datasets

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1" + b"\0" * 64)
    (error,) = import_file(broken, "xlam").errors
    assert (error.line, error.field) == (1, "(file)") and "unreadable Parquet" in error.reason
    rows = json.loads((FIXTURES / "xlam_card.json").read_text())
    split = datasets.Dataset.from_list(rows)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "both"))
    (error,) = import_file(tmp_path / "both", "xlam").errors
    assert f"import one of {tmp_path / 'both'}/train, {tmp_path / 'both'}/test" in error.reason
    assert len(import_file(tmp_path / "both" / "test", "xlam").samples) == 4


@pytest.mark.parametrize("fmt", ["auto", "sharegpt", "toolace"])
def test_toolace_converted_for_llama_factory_imports_with_its_tools_from_the_system_prompt(fmt: str) -> None:
    """``tools`` empty, ToolACE's list inside ``system``, human/gpt/function_call/observation
    turns, Python-syntax calls: before, 0 samples as toolace ('unknown speaker human') and only
    the call-less replies as sharegpt (every call named a tool nobody offered)."""
    path = FIXTURES / "toolace_llamafactory_card.json"
    assert detect_format(path) == (
        "sharegpt",
        "function_call/observation turns, the tools in the system prompt (ToolACE for LLaMA-Factory)",
    )
    report = import_file(path, fmt)
    assert [s.category for s in report.samples] == ["parallel_multiple", "multiple", "irrelevance"]
    assert report.samples[0].label[0] == ToolCall(
        "Get Market Trends", {"trend_type": "MARKET_INDEXES", "country": "de"}
    )
    assert all(label_problem(s) is None for s in report.samples)
    (rejected,) = report.errors  # a call to a tool the row does not offer: that row, by line, counted
    assert (rejected.line, rejected.field) == (3, "label[0].name") and "'bookRestaurant'" in rejected.reason
    assert "4 rows: 3 imported, 1 rejected (label[0].name: 1)" == report.summary()


def hub_cache(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A dataset snapshot in the Hugging Face cache's layout (``huggingface_hub`` writes it so)."""
    folder = root / f"datasets--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    for name, data in files.items():
        path = folder / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_a_hub_dataset_id_imports_from_the_local_cache(tmp_path: Path) -> None:
    card = (FIXTURES / "xlam_card.json").read_bytes()
    cache = hub_cache(
        tmp_path / "hub", "Salesforce/xlam-function-calling-60k", {"xlam_function_calling_60k.json": card}
    )
    hub_cache(cache, "someone/two-files", {"data/train.jsonl": b"", "data/test.jsonl": b""})

    def cli(source: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "looptool", "import", source, "--out", str(tmp_path / "o.jsonl")]
        env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)

    done = cli("hf://datasets/Salesforce/xlam-function-calling-60k")
    assert done.returncode == 0, done.stderr
    assert "format: xlam" in done.stderr and "4 rows: 4 imported, 0 rejected" in done.stderr
    named = cli("hf://datasets/Salesforce/xlam-function-calling-60k/xlam_function_calling_60k.json")
    assert named.returncode == 0 and "4 rows: 4 imported" in named.stderr
    several = cli("hf://datasets/someone/two-files")
    assert several.returncode == 2 and "2 data files in the cached snapshot; name one: " in several.stderr
    assert "hf://datasets/someone/two-files/data/test.jsonl" in several.stderr
    missing = cli("hf://datasets/nobody/nothing")
    assert missing.returncode == 2 and "not in the local Hugging Face cache" in missing.stderr
