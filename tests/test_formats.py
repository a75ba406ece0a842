"""Importers and exporters: fixture files with malformed rows, BFCL's real data, round trips."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from looptool.data import bfcl_reference
from looptool.data.formats import (
    FORMATS,
    answer_path,
    decode_samples,
    encode_samples,
    export_jsonl,
    import_file,
    read_samples,
    write_samples,
)
from looptool.data.formats.bfcl import AST_CATEGORIES
from looptool.data.samples import Sample, ToolCall, sample_id
from looptool.data.worlds.synthetic import build

FIXTURES = Path(__file__).parent / "fixtures" / "formats"


def located(report) -> dict[int, str]:
    return {error.line: f"{error.field}: {error.reason}" for error in report.errors}


def test_openai_rows_and_their_errors() -> None:
    report = import_file(FIXTURES / "openai.jsonl", "openai")
    assert report.rows == 7 and len(report.samples) == 2 and len(report.errors) == 5
    weather, chat = report.samples
    assert weather.label == [ToolCall(name="get_weather", arguments={"city": "Oslo"})]
    assert weather.category == "simple" and weather.messages[0].content == "Weather in Oslo?"
    assert chat.label == [] and chat.category == "irrelevance" and [m.role for m in chat.messages] == ["system", "user"]
    assert weather.lineage.source == f"{FIXTURES / 'openai.jsonl'}:1"
    errors = located(report)
    assert errors[3].startswith("messages: the last turn must be the assistant's")
    assert errors[4].startswith("messages[1].tool_calls: arguments of 'get_weather' are not valid JSON")
    assert errors[5].startswith("(line): invalid JSON")
    assert errors[6] == "label[0].name: calls 'fly', which is not among the offered tools ['get_weather']"
    assert errors[7] == "messages[0].role: unknown role 'robot'"
    assert str(report.errors[0]).startswith(f"{FIXTURES / 'openai.jsonl'}:3: messages:")


@pytest.mark.parametrize("layout", ["jsonl", "json array"])
def test_a_byte_order_mark_is_accepted(tmp_path: Path, layout: str) -> None:
    """A UTF-8 BOM (Windows editors write one) failed the whole file: "line 1: JSON is
    malformed: invalid character (byte 0)" (#33)."""
    lines = (FIXTURES / "openai.jsonl").read_bytes().splitlines()[:2]
    body = b"\n".join(lines) if layout == "jsonl" else b"[" + b",".join(lines) + b"]"
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + body)
    report = import_file(path, "openai")
    assert len(report.samples) == 2 and not report.errors


def test_xlam_rows_and_their_errors() -> None:
    report = import_file(FIXTURES / "xlam.jsonl", "xlam")
    assert len(report.samples) == 1
    (sample,) = report.samples
    assert sample.category == "parallel" and len(sample.label) == 2
    assert sample.label[1].arguments == {"amount": 5, "source": "GBP", "target": "JPY"}
    errors = located(report)
    assert errors[2].startswith("answers: invalid JSON string")
    assert errors[3] == "query: missing"
    assert errors[4] == "tools: expected a list of tools, got dict"


def test_hermes_multi_turn_and_errors() -> None:
    report = import_file(FIXTURES / "hermes.jsonl", "hermes")
    first_turn, sample = report.samples  # one sample per call turn
    assert [m.role for m in first_turn.messages] == ["user"] and first_turn.label == sample.messages[1].tool_calls
    assert [m.role for m in sample.messages] == ["user", "assistant", "tool", "user"]
    assert sample.messages[1].tool_calls == [ToolCall(name="search_products", arguments={"query": "yoga mat"})]
    assert sample.label == [ToolCall(name="search_products", arguments={"query": "rain jacket"})]
    errors = located(report)
    assert errors[2].startswith("conversations[1].value: invalid JSON (nor a Python literal)")
    assert errors[3] == "tools: missing (no tools field and no system turn with <tools>)"


def test_looptool23k_layout() -> None:
    report = import_file(FIXTURES / "looptool23k.jsonl", "looptool23k")
    assert len(report.samples) == 2
    event, chat = report.samples
    assert [m.role for m in event.messages] == ["user", "assistant", "user"]
    assert event.messages[2].content == "Schedule a budget review on 2026-03-09"
    assert event.label == [ToolCall(name="create_event", arguments={"title": "budget review", "date": "2026-03-09"})]
    assert event.category == "multiple"
    assert chat.label == [] and chat.messages[0].content == "What is the capital of Peru?"
    errors = located(report)
    assert errors[3] == "instruction: no <tools>…</tools> block"
    assert errors[4].startswith("label[0].name: calls 'get_weather', which is not among the offered tools")


def test_toolace_python_calls_are_parsed_never_evaluated() -> None:
    report = import_file(FIXTURES / "toolace.jsonl", "toolace")
    assert len(report.samples) == 1
    assert report.samples[0].label == [
        ToolCall(name="get_stock_prices", arguments={"symbols": ["AAPL", "MSFT"], "limit": -3})
    ]
    errors = located(report)
    assert errors[2].startswith("conversations[1].value: argument is not a literal: __import__('os').system('id')")
    assert errors[3].startswith("conversations[1].value: argument is not a literal: 1 + 2")


def test_rejects_file_and_summary(tmp_path: Path) -> None:
    report = import_file(FIXTURES / "xlam.jsonl", "xlam")
    report.write_rejects(tmp_path / "rejects.jsonl")
    rows = [msgspec.json.decode(line) for line in (tmp_path / "rejects.jsonl").read_bytes().splitlines()]
    assert [row["line"] for row in rows] == [2, 3, 4]
    assert report.summary() == "4 rows: 1 imported, 3 rejected (answers: 1, query: 1, tools: 1)"


@pytest.mark.parametrize("category", AST_CATEGORIES)
def test_every_bfcl_ast_category_loads_from_bfcl_eval(category: str) -> None:
    questions, answers = bfcl_reference.category_files(category)
    report = import_file(questions, "bfcl", answers)
    assert report.errors == []
    assert report.rows == len(report.samples) > 0
    # BFCL scores every item, so none is dropped; the few whose own answer fails its tools are
    # flagged, each with the checker's reason.
    suspect = [s for s in report.samples if "suspect_label" in s.meta]
    assert report.suspect == len(suspect) <= 5
    assert all("fails its own tools" in s.meta["suspect_label"] for s in suspect)
    for sample in report.samples:
        assert sample.category == category
        if "relevance" in category:
            assert sample.label == []
        else:
            assert sample.label and sample.meta["possible_answer"]


def test_bfcl_without_answer_file_names_the_missing_answers() -> None:
    questions, _ = bfcl_reference.category_files("simple_python")
    report = import_file(questions, "bfcl")
    assert not report.samples and len(report.errors) == report.rows
    assert report.errors[0].field == "id" and "no answer file given" in report.errors[0].reason


def _strip_lineage(samples: list[Sample]) -> list[Sample]:
    return [msgspec.structs.replace(s, lineage=type(s.lineage)()) for s in samples]


@pytest.mark.parametrize("fmt", [*FORMATS, "bfcl"])
def test_import_export_import_is_identity(fmt: str, tmp_path: Path) -> None:
    if fmt == "bfcl":
        questions, answers = bfcl_reference.category_files("parallel_multiple")
        first = import_file(questions, "bfcl", answers).samples
    else:
        data = build(120, 0, seed=7).train
        if fmt == "xlam":
            data = [s for s in data if len(s.messages) == 1]
        path = tmp_path / f"first.{fmt}.jsonl"
        export_jsonl(data, path, fmt)
        first = import_file(path, fmt).samples
        if fmt in PER_TURN:
            first = _per_turn(first, data)
        assert len(first) == len(data)
    path = tmp_path / f"second.{fmt}.jsonl"
    export_jsonl(first, path, fmt)
    second = import_file(path, fmt, answer_path(path) if fmt == "bfcl" else None)
    assert second.errors == []
    again = _per_turn(second.samples, first) if fmt in PER_TURN else second.samples
    assert _strip_lineage(again) == _strip_lineage(first)


# Conversation layouts whose importers make a sample of every call turn: a multi-turn sample
# exported there comes back with its earlier call turns as samples of their own.
PER_TURN = {"hermes", "sharegpt", "toolace"}


def _per_turn(imported: list[Sample], originals: list[Sample]) -> list[Sample]:
    """The imported samples that are the originals; the rest must be their earlier turns."""
    ids = {s.id for s in originals}
    for extra in (s for s in imported if s.id not in ids):
        assert any(o.messages[: len(extra.messages)] == extra.messages for o in originals), extra.id
    return [s for s in imported if s.id in ids]


def test_world_samples_survive_each_format_with_their_ids(tmp_path: Path) -> None:
    data = [s for s in build(60, 0, seed=3).train if len(s.messages) == 1]
    for fmt in FORMATS:
        export_jsonl(data, tmp_path / f"{fmt}.jsonl", fmt)
        again = import_file(tmp_path / f"{fmt}.jsonl", fmt).samples
        assert [s.id for s in again] == [s.id for s in data], fmt
        assert [s.label for s in again] == [s.label for s in data], fmt


def test_canonical_sample_files_round_trip_and_name_bad_lines(tmp_path: Path) -> None:
    data = build(30, 0, seed=1, noise_rate=0.5).train
    write_samples(data, tmp_path / "train.jsonl")
    assert read_samples(tmp_path / "train.jsonl") == data
    assert decode_samples(encode_samples(data)) == data
    with pytest.raises(ValueError, match=r"blob:2: not a LoopTool sample"):
        decode_samples(encode_samples(data[:1]) + b'{"id": 3}\n', "blob")


def test_exporters_refuse_what_a_format_cannot_hold(tmp_path: Path) -> None:
    multi_turn = next(s for s in build(200, 0, seed=2).train if len(s.messages) > 1)
    with pytest.raises(ValueError, match="single-turn"):
        export_jsonl([multi_turn], tmp_path / "x.jsonl", "xlam")


def test_ids_follow_content() -> None:
    (sample,) = import_file(FIXTURES / "xlam.jsonl", "xlam").samples
    assert sample.id == sample_id(sample.tools, sample.messages, sample.label)


def test_a_samples_file_reports_bad_rows_repeats_and_reused_ids_by_line(tmp_path: Path) -> None:
    """In the `samples` format one bad row aborted the whole import, and a file holding one
    sample three times imported three copies of one id (#33)."""
    samples = build(20, 0, seed=3).train[:3]
    lines = encode_samples(samples).splitlines()
    bad = msgspec.json.decode(lines[2])
    bad["messages"] = 7
    reused = msgspec.json.decode(lines[1])
    reused["messages"][0]["content"] = "another request under the same id"
    rows = [lines[0], lines[1], lines[0], msgspec.json.encode(bad), msgspec.json.encode(reused), lines[0], b"{oops"]
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    report = import_file(path, "samples")
    assert [s.id for s in report.samples] == [samples[0].id, samples[1].id]
    assert report.samples[0].lineage == samples[0].lineage  # LoopTool's own lineage is kept
    assert report.duplicates == 2 and report.repeats == {3: 1, 6: 1}
    assert located(report) == {
        4: "messages: Expected `array`, got `int`",
        5: f"id: {samples[1].id!r} is line 2's id, for another sample",
        7: "(line): invalid JSON: JSON is malformed: object keys must be strings (byte 1)",
    }
    assert "line 3 repeats line 1, line 6 repeats line 1" in report.summary()
