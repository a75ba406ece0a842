"""Reward functions for TRL's ``GRPOTrainer``, built on the same parser and checker.

TRL calls each reward function with ``prompts``, ``completions`` and every dataset column as
keyword arguments, and wants one float per completion. The dataset rows come from
:func:`grpo_row`: the prompt messages, the ``tools``, and the label as a JSON string column
(``answer``, a BFCL possible answer) with its ``category``.

The reward is the paper's binary one: 1 when the parsed calls match the label (parallel calls
as an order-insensitive multiset; a no-call label is matched by a reply with no call), else 0.
"""

from __future__ import annotations

from typing import Any

import msgspec

from looptool.data.calls import CallParseError, extract_calls
from looptool.data.checker import check, sample_answer
from looptool.data.formats.openai import export_row
from looptool.data.samples import Sample

_answer_decoder = msgspec.json.Decoder()


def completion_text(completion: Any) -> str:
    """A completion as text: TRL passes strings, or message lists for conversational data."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(part.get("content") or "" for part in completion if isinstance(part, dict))
    if isinstance(completion, dict):
        return completion.get("content") or ""
    return str(completion)


def format_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 when the reply is well-formed (parseable calls, or plain text), else 0.0."""
    rewards = []
    for completion in completions:
        try:
            extract_calls(completion_text(completion))
            rewards.append(1.0)
        except CallParseError:
            rewards.append(0.0)
    return rewards


def correctness_reward(
    completions: list[Any], tools: list[Any], answer: list[str], category: list[str], **kwargs: Any
) -> list[float]:
    """1.0 when the reply's calls pass the AST checker against the label, else 0.0."""
    rewards = []
    for completion, offered, raw_answer, kind in zip(completions, tools, answer, category, strict=True):
        try:
            calls = extract_calls(completion_text(completion))
        except CallParseError:
            rewards.append(0.0)
            continue
        if isinstance(offered, str):  # datasets keep tools as a JSON string column
            offered = _answer_decoder.decode(offered)
        functions = [tool.get("function", tool) for tool in offered]
        result = check(functions, calls, _answer_decoder.decode(raw_answer), kind)
        rewards.append(1.0 if result.valid else 0.0)
    return rewards


def grpo_row(sample: Sample) -> dict[str, Any]:
    """One GRPO dataset row: ``prompt`` (the context), ``tools``, ``answer``, ``category``."""
    row = export_row(sample)
    return {
        "prompt": row["messages"][:-1],
        "tools": row["tools"],
        "answer": msgspec.json.encode(sample_answer(sample)).decode(),
        "category": sample.category,
        "sample_id": sample.id,
    }
