"""Scoring predictions on benchmark items (``looptool score``, the evaluator): BFCL items with the
AST checker, ACEBench items with ACEBench's rules.

A reply is read as the benchmark's own code reads it: calls a server parsed out of the reply
(``Reply.function_calls``, the benchmarks' function-calling mode) as they are, else the raw
text through the benchmark's own decoder (BFCL's ``default_decode_ast_prompting``, ACEBench's
``ast_parse`` of the whitespace-free text). LoopTool's lenient parser (``extract_calls``: JSON,
Hermes blocks, fences) reads replies for probing and judging, never for a benchmark number."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from looptool.data import acebench_scoring, bfcl_reference
from looptool.data.calls import CallParseError, call_from_json, extract_calls
from looptool.data.checker import CheckResult, check_sample
from looptool.data.formats import ImportReport, RowError, answer_path, import_file
from looptool.data.formats._common import load_answers, read_rows
from looptool.data.samples import Sample, ToolCall
from looptool.kernel.errors import LoopToolError

# Metric names of a benchmark's own summary rows (``bfcl_overall``, ``acebench_summary``, ...).
SUMMARY_PREFIXES = ("bfcl_", "acebench_")


class ScoredItem(msgspec.Struct):
    id: str
    category: str
    valid: bool
    error_type: str = ""
    error: str = ""
    benchmark: str = ""  # "bfcl" or "acebench" when the items are that benchmark's own
    process: float | None = None  # ACEBench agent tasks: the share of milestone calls made


class Reply(msgspec.Struct):
    """A model's answer to one item: its text, and its calls (None when the text did not parse:
    ``parse_error`` says why)."""

    text: str | None = None
    calls: list[ToolCall] | None = None
    parse_error: str | None = None
    # The calls are the answer itself — a server parsed them out of the reply (tool_calls), or
    # the prediction file gave calls — rather than LoopTool's reading of ``text``.
    function_calls: bool = False
    # An ACEBench agent task's result: the scenario classes' final states and the calls made.
    states: list[Any] | None = None
    process: list[str] | None = None


class PredictionFileError(LoopToolError, ValueError):
    pass


def read_predictions(path: str | Path) -> dict[str, Reply]:
    """``id -> reply`` from ``{"id", "calls": [...]}``, ``{"id", "text": "..."}`` or ACEBench's
    result lines ``{"id", "result": "..."}``. A text whose calls do not parse is kept (scored as
    a failure with error type ``parse``), not an exception."""
    predictions: dict[str, Reply] = {}
    for line, row in read_rows(path):
        if isinstance(row, RowError):
            raise PredictionFileError(str(row))
        where = f"{path}:{line}"
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise PredictionFileError(f"{where}: id: expected a string id")
        if row["id"] in predictions:
            raise PredictionFileError(f"{where}: id: {row['id']!r} is predicted twice")
        text = row.get("text", row.get("result"))
        try:
            if isinstance(row.get("result"), list):  # ACEBench's agent result lines
                predictions[row["id"]] = Reply(states=row["result"], process=list(row.get("process") or []))
            elif "calls" in row:
                if not isinstance(row["calls"], list):
                    raise PredictionFileError(f"{where}: calls: expected a list")
                calls = [call_from_json(call) for call in row["calls"]]
                predictions[row["id"]] = Reply(calls=calls, function_calls=True)
            elif isinstance(text, str):
                predictions[row["id"]] = Reply(text=text, calls=extract_calls(text))
            else:
                raise PredictionFileError(f"{where}: needs 'calls' (a list), or 'text' or 'result' (a string)")
        except CallParseError as exc:
            predictions[row["id"]] = Reply(text=text, parse_error=exc.reason)
    return predictions


def item_id(sample: Sample) -> str:
    return str(sample.meta.get("bfcl_id") or sample.meta.get("acebench_id") or sample.id)


def score(
    questions: str | Path, answers: str | Path | None, predictions: str | Path, format: str = "auto"
) -> tuple[ImportReport, Iterator[ScoredItem]]:
    if Path(questions).name.startswith("data_agent_"):  # no samples: scored on final states
        return score_acebench_agent(questions, answers, predictions)
    report = import_file(questions, format, answers)
    predicted = read_predictions(predictions)

    def items() -> Iterator[ScoredItem]:
        for sample in report.samples:
            yield score_item(sample, predicted.get(item_id(sample)))

    return report, items()


def score_acebench_agent(
    questions: str | Path, answers: str | Path | None, predictions: str | Path
) -> tuple[ImportReport, Iterator[ScoredItem]]:
    """ACEBench's agent categories, from the result lines its own inference writes
    (``{"id", "result": [{class: state}], "process": [calls]}``)."""
    from looptool.data.formats.acebench import category_of_id

    answers = Path(answers) if answers else answer_path(questions)
    truth, errors = load_answers(answers, object, "{id, ground_truth, mile_stone}", keep_rows=True)
    ids = [row["id"] for _, row in read_rows(questions) if isinstance(row, dict) and isinstance(row.get("id"), str)]
    predicted = read_predictions(predictions)
    report = ImportReport(rows=len(ids), errors=errors)

    def items() -> Iterator[ScoredItem]:
        for ace_id in ids:
            category, reply, row = category_of_id(ace_id), predicted.get(ace_id), truth.get(ace_id)
            if row is None:
                result = CheckResult(False, "no_ground_truth", f"no ground truth for {ace_id}")
            elif reply is None or reply.states is None:
                result = CheckResult(False, "no_prediction", "no agent result for this id")
            else:
                yield score_agent(ace_id, category, row, reply.states, reply.process or [])
                continue
            yield ScoredItem(
                ace_id, category, False, result.error_type, result.error, benchmark="acebench", process=0.0
            )

    return report, items()


def score_agent(
    ace_id: str, category: str, answer: dict[str, Any], states: list[Any], process: list[str]
) -> ScoredItem:
    """An agent task's verdict from its final class states and the calls made, against its answer
    row (``ground_truth``, ``mile_stone``): a task right end to end has process accuracy 1."""
    result = acebench_scoring.check_agent(answer["ground_truth"], states)
    accuracy = 1.0 if result.valid else acebench_scoring.process_accuracy(answer.get("mile_stone") or [], process)
    return ScoredItem(
        ace_id, category, result.valid, result.error_type, result.error, benchmark="acebench", process=accuracy
    )


def score_item(sample: Sample, reply: Reply | CheckResult | None, benchmark: str = "") -> ScoredItem:
    """One item's verdict: ACEBench's rules for an ACEBench item (its text for the special
    categories, its calls otherwise), the AST checker for everything else."""
    category = sample.meta.get("acebench_category", sample.category)
    if reply is None:
        result = CheckResult(False, "no_prediction", "no prediction for this id")
    elif isinstance(reply, CheckResult):
        result = reply
    elif "acebench_category" in sample.meta:
        benchmark = "acebench"
        result = acebench_scoring.check_item(sample, None if reply.function_calls else reply.text, reply.calls)
    elif "bfcl_id" in sample.meta and reply.text and not reply.function_calls:
        result = _check_bfcl_text(sample, reply.text)
    elif reply.calls is None:
        result = CheckResult(False, "parse", reply.parse_error or "the reply did not parse")
    else:
        result = check_sample(sample, reply.calls)
    return ScoredItem(
        id=item_id(sample),
        category=category,
        valid=result.valid,
        error_type=result.error_type,
        error=result.error,
        benchmark=benchmark or ("acebench" if "acebench_category" in sample.meta else ""),
    )


def _check_bfcl_text(sample: Sample, text: str) -> CheckResult:
    """A BFCL item's text reply, decoded by BFCL's own prompt-mode decoder. What it cannot read
    holds no call: right for an irrelevance item, a decoding failure for any other."""
    try:
        calls = bfcl_reference.decode_prompting(text)
    except CallParseError as exc:
        if "irrelevance" in sample.category:
            return check_sample(sample, [])
        return CheckResult(False, "parse", exc.reason)
    return check_sample(sample, calls)


def accuracy_table(items: list[ScoredItem]) -> list[tuple[str, int, int, float]]:
    """``(category, correct, total, accuracy)`` per category, then ``overall`` (item-weighted).
    An ACEBench multi-turn category counts dialogues, as ACEBench does."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    dialogues: dict[str, dict[str, bool]] = defaultdict(dict)
    for item in items:
        if item.benchmark == "acebench" and "multi_turn" in item.category:
            unit = acebench_scoring.dialogue_of(item.id)
            dialogues[item.category][unit] = dialogues[item.category].get(unit, True) and item.valid
            continue
        counts[item.category][0] += item.valid
        counts[item.category][1] += 1
    for category, units in dialogues.items():
        counts[category] = [sum(units.values()), len(units)]
    rows = [(category, ok, total, ok / total) for category, (ok, total) in sorted(counts.items())]
    ok = sum(r[1] for r in rows)
    total = sum(r[2] for r in rows)
    rows.append(("overall", ok, total, ok / total if total else 0.0))
    return rows


def metrics(items: list[ScoredItem]) -> dict[str, Any]:
    """Accuracy per category and overall (item-weighted), plus each benchmark's own summary
    where its items were scored: BFCL's overall with BFCL's weights (its own leaderboard code),
    BFCL v3's overall (the paper's headline), ACEBench's summary with its weights."""
    table = accuracy_table(items)
    scores: dict[str, Any] = {category: accuracy for category, _, _, accuracy in table}
    benchmark_of = {item.category: item.benchmark for item in items}
    for category in {item.category for item in items if item.process is not None}:
        processes = [item.process or 0.0 for item in items if item.category == category]
        scores[f"{category}_process"] = sum(processes) / len(processes)
    ace = {category: accuracy for category, _, _, accuracy in table if benchmark_of.get(category) == "acebench"}
    if ace:
        scores.update({f"acebench_{k}": v for k, v in acebench_scoring.summary(ace).items()})
    bfcl = {category: (ok, total) for category, ok, total, _ in table if benchmark_of.get(category) == "bfcl"}
    if bfcl:
        from looptool.data import bfcl_reference

        scores.update({f"bfcl_{k}": v for k, v in bfcl_reference.leaderboard(bfcl).items()})
        scores["bfcl_v3_overall"] = bfcl_reference.v3_overall(bfcl)
    return scores
