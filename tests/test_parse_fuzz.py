"""Every parser of model text, fuzzed with replies built from the fragments that broke them:
fences, think and tool-call tags, Llama's markers, brackets, quotes, whitespace runs, dotted
names, lone surrogates (a JSON ``\\ud800`` escape in a server's reply carries one). Each may
refuse a reply only with its own error; none may crash. (Parse time against length is measured
side by side in ``bench/parse_linearity.py``, not asserted here.)"""

from __future__ import annotations

import os

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from looptool.data import acebench_scoring, bfcl_reference
from looptool.data.calls import CallParseError, extract_calls, parse_calls, without_lone_surrogates
from looptool.loop import expansion

FRAGMENTS = [
    "```", "```json", "```python", "```tool_call", "<think>", "</think>", "<tool_call>", "</tool_call>",
    "<|python_tag|>", "<|eom_id|>", "<|eot_id|>", "[", "]", "{", "}", "(", ")", '"', "'", "\\", ",", ";", ":",
    "=", ".", "a.b", "f(", "x=1", '{"name": "f", "arguments": {"a": 1}}', "[f(a=1)]", "\ud800", "\udfff",
    "\u00e9", "\U0001f600", "\x00", " ", "\t", "\n", "  \n\n  ", "1e999", "-", "...", "None", "True",
]  # fmt: skip
replies = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8), st.sampled_from([" " * 200, "\n" * 200, "[" * 200])),
    max_size=40,
).map("".join)
EXAMPLES = int(os.environ.get("LOOPTOOL_HYPOTHESIS_EXAMPLES", "300"))


@settings(max_examples=EXAMPLES, deadline=None)
@given(replies)
def test_call_parsers_refuse_only_with_their_own_error(reply: str) -> None:
    for parse in (parse_calls, extract_calls):
        try:
            calls = parse(reply)
        except CallParseError:
            continue
        msgspec.json.encode(calls)  # what they return travels in events: it must encode


@settings(max_examples=EXAMPLES, deadline=None)
@given(replies)
def test_acebench_reading_refuses_only_with_its_own_error(reply: str) -> None:
    for category in ("normal_atom_list", "normal_multi_turn_user_adjust"):  # first [...]; whitespace deleted
        try:
            acebench_scoring.read_reply(category, reply)
        except acebench_scoring.AceDecodeError:
            pass


@settings(max_examples=EXAMPLES, deadline=None)
@given(replies)
def test_generator_replies_are_counted_never_crash(reply: str) -> None:
    samples, rejected = expansion.parse_generated(reply)
    assert samples or rejected


def test_a_lone_surrogate_is_refused_by_name_and_scrubbed_from_kept_text() -> None:
    reply = '<|python_tag|>{"name": "f", "parameters": {"a": "\ud800"}}'
    for parse in (parse_calls, extract_calls):
        try:
            parse(reply)
        except CallParseError as exc:
            assert "lone surrogate" in exc.reason
        else:
            raise AssertionError("a reply no event can carry was parsed")
    assert without_lone_surrogates("a\ud800b") == "a\ufffdb" and without_lone_surrogates("ok") == "ok"


def test_a_reply_past_the_length_rule_is_refused_unparsed() -> None:
    try:
        parse_calls("[f(a=1)]" + " " * 200_000)
    except CallParseError as exc:
        assert "limit 200000" in exc.reason
    else:
        raise AssertionError("an over-long reply was parsed")


@settings(max_examples=EXAMPLES, deadline=None)
@given(replies)
def test_bfcl_prompt_decoding_refuses_only_with_a_call_parse_error(reply: str) -> None:
    for decode in (bfcl_reference.decode_prompting, bfcl_reference.decode_execute_prompting):
        try:
            msgspec.json.encode(decode(reply))
        except CallParseError:
            pass
