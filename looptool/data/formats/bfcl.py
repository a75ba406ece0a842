"""BFCL: question files (``id``, ``question``, ``function``) with ``possible_answer`` files.

The possible answer (per parameter, the list of acceptable values) is kept whole in
``sample.meta["possible_answer"]`` and is what the checker scores against; the concrete label
takes the first acceptable value of each parameter (parameters whose only option is "absent"
are left out). Only the single-turn AST categories are read (multi-turn, memory, web-search
and format-sensitivity entries have another shape).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from looptool.data.formats._common import (
    ImportReport,
    RowRejected,
    import_rows,
    load_answers,
    make_sample,
    need,
    tools_from,
)
from looptool.data.formats.openai import message_dict, parse_message
from looptool.data.samples import Sample, ToolCall

AST_CATEGORIES = (
    "simple_python",
    "simple_java",
    "simple_javascript",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "live_irrelevance",
    "live_relevance",
)


def category_of_id(bfcl_id: str) -> str:
    """``live_parallel_multiple_3-2-1`` -> ``live_parallel_multiple``."""
    head = bfcl_id.split("-")[0]
    return head.rsplit("_", 1)[0] if head.rsplit("_", 1)[-1].isdigit() else head


def label_from_answer(answer: list[dict[str, dict[str, list[Any]]]]) -> list[ToolCall]:
    calls = []
    for expected in answer:
        ((name, params),) = expected.items()
        arguments = {}
        for param, options in params.items():
            chosen = next((option for option in options if option != ""), None)
            if chosen is not None:
                arguments[param] = _concrete(chosen)
        calls.append(ToolCall(name=name, arguments=arguments))
    return calls


def _concrete(option: Any) -> Any:
    # Acceptable dictionaries are written {key: [acceptable values]}: take the first of each.
    if isinstance(option, dict):
        concrete = {}
        for key, values in option.items():
            if not isinstance(values, list):  # a few live entries write the value itself
                concrete[key] = values
            elif values and values[0] != "":
                concrete[key] = _concrete(values[0])
        return concrete
    if isinstance(option, list) and option and all(isinstance(item, dict) for item in option):
        return [_concrete(item) for item in option]
    return option


def import_bfcl(questions: str | Path, answers: str | Path | None = None) -> ImportReport:
    """Read a BFCL question file and (except for irrelevance/relevance) its possible answers."""
    truth, answer_errors = load_answers(answers, list, "{id, ground_truth: [...]}") if answers else ({}, [])

    def parse_row(row: dict[str, Any]) -> Sample:
        bfcl_id = need(row, "id", str)
        category = category_of_id(bfcl_id)
        turns = need(row, "question", list)
        if len(turns) != 1 or not isinstance(turns[0], list):
            raise RowRejected("question", "only single-turn entries are read (one list of messages)")
        messages = [parse_message(m, f"question[0][{i}]") for i, m in enumerate(turns[0])]
        tools = tools_from(need(row, "function", list), "function")
        if "irrelevance" in category or category == "live_relevance":
            answer: list[Any] = []
        elif bfcl_id not in truth:
            raise RowRejected(
                "id", f"no possible answer for {bfcl_id!r}" + ("" if answers else " (no answer file given)")
            )
        else:
            answer = truth[bfcl_id]
        label = label_from_answer(answer)
        return make_sample(
            tools, messages, label, category=category, meta={"bfcl_id": bfcl_id, "possible_answer": answer}
        )

    # BFCL scores every item: duplicates stay, and an item whose own answer fails its tools
    # (a handful in BFCL's data) is kept and flagged, never dropped.
    report = import_rows(questions, parse_row, collapse_duplicates=False, keep_suspect=True)
    report.errors[:0] = answer_errors
    return report


def export_rows(sample: Sample) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(question row, possible-answer row)`` for one sample."""
    from looptool.data.checker import sample_answer

    bfcl_id = sample.meta.get("bfcl_id", sample.id)
    question = {
        "id": bfcl_id,
        "question": [[message_dict(m) for m in sample.messages]],
        "function": [
            {"name": t.function.name, "description": t.function.description, "parameters": t.function.parameters}
            for t in sample.tools
        ],
    }
    return question, {"id": bfcl_id, "ground_truth": sample_answer(sample)}
