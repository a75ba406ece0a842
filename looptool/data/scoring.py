"""Scoring predictions on BFCL-format question/answer files (``looptool score``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from looptool.data.calls import CallParseError, call_from_json, extract_calls
from looptool.data.checker import CheckResult, check_sample
from looptool.data.formats import ImportReport, RowError, import_file
from looptool.data.formats._common import read_rows
from looptool.data.samples import Sample, ToolCall
from looptool.kernel.errors import LoopToolError


class ScoredItem(msgspec.Struct):
    id: str
    category: str
    valid: bool
    error_type: str = ""
    error: str = ""


class PredictionFileError(LoopToolError, ValueError):
    pass


def read_predictions(path: str | Path) -> dict[str, list[ToolCall] | CheckResult]:
    """``id -> calls`` from ``{"id", "calls": [...]}`` or ``{"id", "text": "..."}`` lines. A text
    that does not parse is kept as a failed result (error type ``parse``), not an exception."""
    predictions: dict[str, list[ToolCall] | CheckResult] = {}
    for line, row in read_rows(path):
        if isinstance(row, RowError):
            raise PredictionFileError(str(row))
        where = f"{path}:{line}"
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise PredictionFileError(f"{where}: id: expected a string id")
        if row["id"] in predictions:
            raise PredictionFileError(f"{where}: id: {row['id']!r} is predicted twice")
        try:
            if "calls" in row:
                if not isinstance(row["calls"], list):
                    raise PredictionFileError(f"{where}: calls: expected a list")
                predictions[row["id"]] = [call_from_json(call) for call in row["calls"]]
            elif isinstance(row.get("text"), str):
                predictions[row["id"]] = extract_calls(row["text"])
            else:
                raise PredictionFileError(f"{where}: needs 'calls' (a list) or 'text' (a string)")
        except CallParseError as exc:
            predictions[row["id"]] = CheckResult(False, "parse", exc.reason)
    return predictions


def score(
    questions: str | Path, answers: str | Path | None, predictions: str | Path
) -> tuple[ImportReport, Iterator[ScoredItem]]:
    report = import_file(questions, "bfcl", answers)
    predicted = read_predictions(predictions)

    def items() -> Iterator[ScoredItem]:
        for sample in report.samples:
            yield score_item(sample, predicted.get(sample.meta["bfcl_id"]))

    return report, items()


def score_item(sample: Sample, prediction: list[ToolCall] | CheckResult | None) -> ScoredItem:
    item_id = sample.meta["bfcl_id"]
    if prediction is None:
        result = CheckResult(False, "no_prediction", "no prediction for this id")
    elif isinstance(prediction, CheckResult):
        result = prediction
    else:
        result = check_sample(sample, prediction)
    return ScoredItem(
        id=item_id, category=sample.category, valid=result.valid, error_type=result.error_type, error=result.error
    )


def accuracy_table(items: list[ScoredItem]) -> list[tuple[str, int, int, float]]:
    """``(category, correct, total, accuracy)`` per category, then ``overall`` (item-weighted)."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for item in items:
        counts[item.category][0] += item.valid
        counts[item.category][1] += 1
    rows = [(category, ok, total, ok / total) for category, (ok, total) in sorted(counts.items())]
    ok = sum(r[1] for r in rows)
    total = sum(r[2] for r in rows)
    rows.append(("overall", ok, total, ok / total if total else 0.0))
    return rows


def metrics(items: list[ScoredItem]) -> dict[str, Any]:
    return {category: accuracy for category, _, _, accuracy in accuracy_table(items)}
