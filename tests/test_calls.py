"""Parsing model output into calls, including property tests of the Python-call parser."""

from __future__ import annotations

import keyword
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from looptool.data.calls import (
    CallParseError,
    extract_calls,
    format_python_calls,
    format_tool_call_blocks,
    parse_calls,
    parse_python_calls,
    split_reasoning,
)
from looptool.data.checker import check, possible_answer
from looptool.data.samples import FunctionSpec, ToolCall, ToolSpec

OSLO = ToolCall(name="get_weather", arguments={"city": "Oslo"})


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
        '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}</tool_call>',
        '{"name": "get_weather", "parameters": {"city": "Oslo"}}',
        '[{"name": "get_weather", "arguments": {"city": "Oslo"}}]',
        '{"tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}}]}',
        '```json\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```',
        "get_weather(city='Oslo')",
        '[get_weather(city="Oslo")]',
        "<think>The user wants weather.</think>\n[get_weather(city='Oslo')]",
        '{"get_weather": {"city": "Oslo"}}',
        # Llama 3.1/3.2, as their templates render a call and as a server keeping special tokens returns it
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}<|eom_id|>',
        '{"name": "get_weather", "parameters": {"city": "Oslo"}}<|eot_id|>',
    ],
)
def test_each_shape_parses_to_the_same_call(text: str) -> None:
    assert parse_calls(text) == [OSLO]
    assert extract_calls(text) == [OSLO]


def test_llama_calls_joined_by_semicolons_are_each_parsed() -> None:
    bergen = ToolCall(name="get_weather", arguments={"city": "Bergen; Norway"})
    text = '{"name": "get_weather", "parameters": {"city": "Oslo"}}; {"name": "get_weather", "parameters": {"city": "Bergen; Norway"}}'
    assert parse_calls(text) == [OSLO, bergen]
    # `};{` inside a string argument (after an escaped quote, too) is no separator
    odd = ToolCall(name="note", arguments={"text": 'a"};{b'})
    assert parse_calls(r'{"name": "note", "parameters": {"text": "a\"};{b"}}') == [odd]
    assert parse_calls(r'{"name": "note", "parameters": {"text": "a\"};{b"}}; ' + text) == [odd, OSLO, bergen]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty output"),
        ("<tool_call>{not json}</tool_call>", "invalid JSON"),
        ('{"arguments": {}, "id": 1}', "needs a 'name'"),
        ("get_weather('Oslo')", "positional arguments"),
        ("get_weather(city=open('/etc/passwd').read())", "not a literal"),
        ("get_weather(**{'city': 'Oslo'})", r"uses \*\*kwargs"),
        ("<think>still thinking", "empty output"),
    ],
)
def test_non_calls_raise_a_typed_error(text: str, reason: str) -> None:
    with pytest.raises(CallParseError, match=reason) as info:
        parse_calls(text)
    assert info.value.reason


def test_plain_text_is_no_call_but_a_broken_attempt_is_an_error() -> None:
    assert extract_calls("The capital of Peru is Lima.") == []
    assert extract_calls("") == []
    with pytest.raises(CallParseError):
        extract_calls('<tool_call>{"name": </tool_call>')


def test_reasoning_is_split_off_and_kept() -> None:
    reasoning, rest = split_reasoning("<think>step 1\nstep 2</think>answer")
    assert reasoning == "step 1\nstep 2" and rest == "answer"
    assert split_reasoning("no reasoning") == (None, "no reasoning")


def test_hermes_blocks_round_trip() -> None:
    calls = [OSLO, ToolCall(name="f", arguments={"n": [1, 2.5, None, True]})]
    assert parse_calls(format_tool_call_blocks(calls)) == calls


# --------------------------------------------------------------------------- properties

# Python keywords cannot name a function in call syntax (a name like `as` is not a call target).
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}(\.[A-Za-z_][A-Za-z0-9_]{0,8})?", fullmatch=True).filter(
    lambda n: not any(keyword.iskeyword(part) or part in {"True", "False", "None"} for part in n.split("."))
)
keys = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(lambda k: not keyword.iskeyword(k))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)
calls = st.lists(
    st.builds(ToolCall, name=names, arguments=st.dictionaries(keys, values, max_size=4)), min_size=1, max_size=4
)


@settings(max_examples=int(os.environ.get("LOOPTOOL_HYPOTHESIS_EXAMPLES", "300")), deadline=None)
@given(calls)
def test_python_call_syntax_round_trips(generated: list[ToolCall]) -> None:
    assert parse_python_calls(format_python_calls(generated)) == generated
    assert parse_calls(format_python_calls(generated)) == generated


@settings(max_examples=int(os.environ.get("LOOPTOOL_HYPOTHESIS_EXAMPLES", "300")), deadline=None)
@given(st.text(max_size=60))
def test_python_call_parser_never_crashes_on_junk(text: str) -> None:
    try:
        parse_python_calls(text)
    except CallParseError:
        pass


json_types = {
    "string": st.text(max_size=12),
    "integer": st.integers(-1000, 1000),
    "number": st.floats(-1e6, 1e6, allow_nan=False),
    "boolean": st.booleans(),
}


@st.composite
def tool_and_label(draw):
    params = draw(st.dictionaries(keys, st.sampled_from(sorted(json_types)), min_size=1, max_size=5))
    required = [p for p in params if draw(st.booleans())]
    nested = draw(st.booleans())
    properties = {p: {"type": t} for p, t in params.items()}
    if nested:
        properties["items_list"] = {"type": "array", "items": {"type": "string"}}
        properties["opts"] = {"type": "object", "properties": {"x": {"type": "integer"}}}
    tool = ToolSpec(
        function=FunctionSpec(
            name=draw(names), parameters={"type": "object", "properties": properties, "required": required}
        )
    )
    arguments = {}
    for p, t in params.items():
        if p in required or draw(st.booleans()):
            arguments[p] = draw(json_types[t])
    if nested and draw(st.booleans()):
        arguments["items_list"] = draw(st.lists(st.text(max_size=5), max_size=3))
        arguments["opts"] = {"x": draw(st.integers(0, 9))}
    n = draw(st.integers(1, 3))
    return tool, [ToolCall(name=tool.function.name, arguments=dict(arguments)) for _ in range(n)]


@settings(max_examples=int(os.environ.get("LOOPTOOL_HYPOTHESIS_EXAMPLES", "300")), deadline=None)
@given(tool_and_label())
def test_a_label_always_scores_valid_against_itself(case) -> None:
    tool, label = case
    answer = possible_answer(label, [tool])
    category = "parallel" if len(label) > 1 else "simple"
    result = check([tool.function], label, answer, category)
    assert result.valid, result
