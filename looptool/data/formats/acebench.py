"""ACEBench (``data_all/data_en/data_<category>.json``, JSON lines) with its ``possible_answer/``.

``{"id": "normal_single_turn_single_function_0", "question": "user: …\\nsystem: …\\nuser: …",
"function": [{name, description, parameters}], "profile"?: {...}}``; the answer file beside it
holds ``{"id", "ground_truth": {function: {argument: value}}}`` (several keys: parallel calls,
``name_1``/``name_2`` for one function called twice; a list: alternative answers; a string: no
call is right).

Quirks read as they are: in ``question`` the assistant's turns are written ``system:``; some
functions name their schema ``arguments`` instead of ``parameters``; the *special* categories
(irrelevant, incomplete, error_param) expect the model to say what is wrong instead of calling,
so their label is "no call". Every item keeps its ground truth and functions in ``meta`` for
ACEBench's scoring rules. The *agent* categories are tasks in ACEBench's scenario classes, not
samples: they are rejected here by name and played by the evaluator
(:mod:`looptool.loop.acebench_agent`) or scored from results (``looptool score``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from looptool.data.formats._common import (
    ImportReport,
    RowRejected,
    answer_path,
    import_rows,
    load_answers,
    make_sample,
    need,
    tools_from,
)
from looptool.data.samples import Message, Sample, ToolCall

_TURN = re.compile(r"^(user|system|assistant):\s?", re.MULTILINE)
_ROLES = {"user": "user", "system": "assistant", "assistant": "assistant"}


def category_of_id(ace_id: str) -> str:
    """``normal_multi_turn_user_adjust_0_1`` -> ``normal_multi_turn_user_adjust``."""
    parts = ace_id.split("_")
    while parts and parts[-1].isdigit():
        parts.pop()
    return "_".join(parts)


def dialogue(text: str) -> list[Message]:
    """``user: …\\nsystem: …`` -> messages; a line without a marker continues the turn before."""
    marks = list(_TURN.finditer(text))
    if not marks:
        raise RowRejected("question", "no 'user:' turn")
    messages = []
    for mark, after in zip(marks, [*marks[1:], None], strict=True):
        body = text[mark.end() : after.start() if after else len(text)].strip()
        messages.append(Message(role=_ROLES[mark.group(1)], content=body))  # type: ignore[arg-type]
    return messages


def _with_parameters(function: Any) -> Any:
    """Some ACEBench functions call their schema ``arguments``."""
    if isinstance(function, dict) and "parameters" not in function and "arguments" in function:
        return {**{k: v for k, v in function.items() if k != "arguments"}, "parameters": function["arguments"]}
    return function


def calls_of(truth: dict[str, Any], offered: set[str]) -> list[ToolCall]:
    """Calls from ``{function: arguments}``. A function called twice appears as ``name_1``,
    ``name_2`` (JSON keys are unique): the suffix goes when only the bare name is offered."""
    calls = []
    for key, arguments in truth.items():
        if not isinstance(arguments, dict):
            raise RowRejected("ground_truth", f"arguments of {key!r} are not an object")
        bare, _, number = key.rpartition("_")
        name = bare if key not in offered and number.isdigit() and bare in offered else key
        calls.append(ToolCall(name=name, arguments=arguments))
    return calls


def import_acebench(questions: str | Path, answers: str | Path | None = None) -> ImportReport:
    answers = Path(answers) if answers else answer_path(questions)
    truth, answer_errors = load_answers(answers, object, "{id, ground_truth}") if answers.exists() else ({}, [])

    def parse_row(row: dict[str, Any]) -> Sample:
        ace_id = need(row, "id", str)
        category = category_of_id(ace_id)
        if category.startswith("agent"):
            raise RowRejected("id", f"{category}: agent tasks are played by the evaluator, not imported as samples")
        messages = dialogue(need(row, "question", str))
        if isinstance(row.get("profile"), dict):
            profile = ", ".join(f"{k}: {v}" for k, v in row["profile"].items())
            messages.insert(0, Message(role="system", content=f"User profile: {profile}"))
        functions = [_with_parameters(f) for f in need(row, "function", list)]
        tools = tools_from(functions, "function")
        if ace_id not in truth:
            raise RowRejected("id", f"no ground truth for {ace_id!r} in {answers}")
        expected = truth[ace_id]
        # What ACEBench's rules score against (looptool.data.acebench_scoring): the answer whole,
        # and the functions with their declared types as written.
        meta: dict[str, Any] = {
            "acebench_id": ace_id,
            "acebench_category": category,
            "acebench_ground_truth": expected,
            "acebench_functions": functions,
        }
        if category.startswith("special"):
            return make_sample(tools, messages, [], category="irrelevance", meta=meta)
        alternatives = expected if isinstance(expected, list) else [expected]
        if not alternatives or not all(isinstance(a, dict) for a in alternatives):
            raise RowRejected("ground_truth", f"expected an object of calls (or a list of them), got {expected!r:.80}")
        label = calls_of(alternatives[0], {t.function.name for t in tools})
        return make_sample(tools, messages, label, meta=meta)

    # A benchmark: every item counts, duplicates and suspect labels included (flagged).
    report = import_rows(questions, parse_row, collapse_duplicates=False, keep_suspect=True)
    report.errors[:0] = answer_errors
    return report
