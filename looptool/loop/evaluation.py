"""Held-out evaluation: BFCL-format sets scored with the AST checker, per category and overall."""

from __future__ import annotations

from pathlib import Path

import anyio

from looptool.data import bfcl_reference
from looptool.data.checker import CheckResult
from looptool.data.formats import answer_path, import_file
from looptool.data.samples import Sample
from looptool.data.scoring import ScoredItem, metrics, score_item
from looptool.kernel.errors import LoopToolError
from looptool.llm.client import ModelClient, ModelRequestError


class EvalSetError(LoopToolError, ValueError):
    pass


def load_eval_sets(specs: list[str]) -> list[Sample]:
    """Samples of every set: ``path/to/BFCL_xxx.json`` (answers in ``possible_answer/`` beside it)
    or ``bfcl:<category>`` for BFCL's own data. A row that does not import is an error here:
    silently scoring fewer items would change what the numbers mean."""
    samples: list[Sample] = []
    for spec in specs:
        if spec.startswith("bfcl:"):
            questions, answers = bfcl_reference.category_files(spec.removeprefix("bfcl:"))
        else:
            questions = Path(spec)
            answers = answer_path(questions)
            answers = answers if answers.exists() else None
        if not Path(questions).exists():
            raise EvalSetError(f"evaluation set {spec!r}: {questions} does not exist")
        report = import_file(questions, "bfcl", answers)
        if report.errors:
            raise EvalSetError(f"evaluation set {spec!r}: {report.summary()}; first: {report.errors[0]}")
        samples.extend(report.samples)
    return samples


async def evaluate(client: ModelClient, model: str, samples: list[Sample], max_tokens: int) -> list[ScoredItem]:
    """Greedy predictions for every item, scored; unparseable replies and requests the server
    refuses (a prompt over its context length) score as failures."""
    items: list[ScoredItem | None] = [None] * len(samples)

    async def one(index: int, sample: Sample) -> None:
        try:
            prediction = await client.predict(sample, model, max_tokens=max_tokens)
        except ModelRequestError as exc:  # e.g. a prompt over the context length: this item fails
            items[index] = score_item(sample, CheckResult(False, "refused", str(exc)[:500]))
            return
        outcome = (
            CheckResult(False, prediction.error_type, prediction.error or "")
            if prediction.error_type
            else prediction.calls
        )
        items[index] = score_item(sample, outcome)

    async with anyio.create_task_group() as tg:
        for index, sample in enumerate(samples):
            tg.start_soon(one, index, sample)
    return [item for item in items if item is not None]


__all__ = ["EvalSetError", "evaluate", "load_eval_sets", "metrics"]
