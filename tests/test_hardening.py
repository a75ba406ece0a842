"""Dirty data and hostile text: every input ends in a clear error or a value, never a crash,
and nothing is super-linear. The fuzz tests run hypothesis with a stated example count."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from looptool.data.calls import CallParseError, extract_calls, split_reasoning
from looptool.data.formats import FORMATS, import_file, read_samples, write_samples
from looptool.data.worlds.synthetic import build
from looptool.kernel.bus import decode_bytes
from looptool.kernel.errors import PoisonMessage
from looptool.kernel.events import json_depth_exceeds
from looptool.kernel.names import InvalidName, check_header_value
from looptool.loop import events as _events  # noqa: F401  (registers the loop's event types)

FUZZ_EXAMPLES = 300


HOSTILE = {
    "deep unary minus": "f(a=" + "-" * 3000 + "1)",
    "unclosed think, many": "<think>" * 8000,
    "deep JSON in a tool call": "<tool_call>" + "[" * 100000 + "</tool_call>",
    "deep JSON object": '{"name": "f", "arguments": ' + '{"a":' * 5000 + "1" + "}" * 5000 + "}",
    "long dotted name": "f" + ".a" * 50000 + "(x=1)",
    "deep lists": "f(a=" + "[" * 5000 + "]" * 5000 + ")",
    "many open fences": "```json\n" * 20000,
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_model_output_is_a_parse_error_or_calls_quickly(text: str) -> None:
    started = time.perf_counter()
    try:
        extract_calls(text)
    except CallParseError:
        pass
    assert time.perf_counter() - started < 1.0


def test_unclosed_think_is_linear() -> None:
    small, large = "<think>x " * 2000, "<think>x " * 32000
    timings = []
    for text in (small, large):
        started = time.perf_counter()
        split_reasoning(text)
        timings.append(time.perf_counter() - started)
    assert timings[1] < max(timings[0], 1e-4) * 64  # 16x the input: far below the 256x of a quadratic scan


def test_reasoning_is_split_as_before() -> None:
    assert split_reasoning("<think>a</think>b<think>c</think> d") == ("a\nc", "b d")
    assert split_reasoning("  <think>still thinking") == ("still thinking", "")
    assert split_reasoning("answer <think>late") == (None, "answer <think>late")


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list("f(a=-1)[]{}\"':,.<>/ _tool_call\\think`json\n")), max_size=400))
def test_fuzz_call_parsing_raises_only_parse_errors(text: str) -> None:
    try:
        extract_calls(text)
    except CallParseError:
        pass


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.text(alphabet=st.sampled_from(list('{}[]":,0a\\ ')), max_size=300).map(str.encode))
def test_fuzz_event_decoding_raises_only_poison(data: bytes) -> None:
    try:
        decode_bytes(data)
    except PoisonMessage:
        pass


def test_deeply_nested_events_are_poison() -> None:
    nested = b'{"type": "probe.task", "run": "r", "model": "m", "sample": ' + b"[" * 10000 + b"]" * 10000 + b"}"
    assert json_depth_exceeds(nested)
    with pytest.raises(PoisonMessage):
        decode_bytes(nested)
    assert not json_depth_exceeds(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\""}')


@pytest.mark.parametrize("value", ["a\r\nb", "has space", "ü", "x" * 2000])
def test_header_values_are_checked(value: str) -> None:
    with pytest.raises(InvalidName):
        check_header_value("message id", value)


@pytest.mark.parametrize("fmt", sorted(f for f in FORMATS if f != "bfcl"))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.binary(max_size=120)
        | st.text(alphabet=st.sampled_from(list('{}[]":,0aq\\ ')), max_size=120).map(str.encode),
        max_size=6,
    )
)
def test_fuzz_importers_reject_rows_without_aborting(
    fmt: str, rows: list[bytes], tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "rows.jsonl"
    path.write_bytes(b"\n".join(r.replace(b"\n", b" ") for r in rows))
    report = import_file(path, fmt)
    assert len(report.errors) <= report.rows
    assert all(s.lineage.source.startswith(f"{path}:") for s in report.samples)


def test_a_dirty_seed_file_is_reported_row_by_row(tmp_path: Path) -> None:
    good = build(3, 0, seed=2).train
    tool = {
        "type": "function",
        "function": {"name": "w", "parameters": {"type": "object", "properties": {"city": "string"}}},
    }
    rows = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": "{}"}}],
                    },
                ],
                "tools": [tool],
            }
        ).encode(),
        b'{"messages": [\xff\xfe]}',
        b'{"messages": "\xff\xfe"}',  # valid JSON but for the UTF-8 inside a string
    ]
    from looptool.data.formats.openai import export_row

    good_rows = [json.dumps(export_row(s)).encode() for s in good]
    path = tmp_path / "dirty.jsonl"
    path.write_bytes(b"\n".join([*good_rows, good_rows[0], *rows]))
    report = import_file(path, "openai")
    assert len(report.samples) == 3 and report.duplicates == 1
    where = {(e.line, e.field) for e in report.errors}
    assert (5, "tools[0].parameters.properties.city") in where
    assert any(e.line == 6 for e in report.errors)
    assert [e.field for e in report.errors if e.line == 7] == ["(line)"]
    assert "1 duplicate(s) collapsed" in report.summary()


def test_canonical_samples_with_bad_ids_are_refused(tmp_path: Path) -> None:
    sample = build(1, 0, seed=3).train[0]
    write_samples([msgspec.structs.replace(sample, id="s-1\r\nNats-Msg-Id: x")], tmp_path / "s.jsonl")
    with pytest.raises(ValueError, match=r"s.jsonl:1: id"):
        read_samples(tmp_path / "s.jsonl")
