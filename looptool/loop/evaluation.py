"""Held-out evaluation: benchmark items scored per category and overall.

An evaluation set is one of

- ``bfcl:<category>``: BFCL's own data from ``bfcl-eval`` — the single-turn categories (AST
  checker) and the multi-turn ones (rollouts in BFCL's backends, BFCL's checker);
- a question file in BFCL's or ACEBench's layout (the answers in ``possible_answer/`` beside it):
  BFCL-layout files (the synthetic world's test split among them) are scored with the AST
  checker, ACEBench files with ACEBench's rules; ACEBench's ``agent_multi_step`` tasks are played
  in its scenario classes (:mod:`looptool.loop.acebench_agent`).

``:<n>`` after either keeps the first ``n`` items (a smoke test, not a benchmark number).
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeAlias

import anyio

from looptool.data import bfcl_reference
from looptool.data.checker import CheckResult
from looptool.data.formats import BENCHMARKS, answer_path, detect_format, import_file
from looptool.data.samples import Sample
from looptool.data.scoring import Reply, ScoredItem, metrics, score_item
from looptool.kernel.errors import LoopToolError
from looptool.llm.client import ModelClient, ModelRequestError
from looptool.loop.acebench_agent import AgentItem, AgentSetError, UserSimulator, evaluate_agent, load_agent_items
from looptool.loop.multi_turn import MultiTurnItem, evaluate_multi_turn, load_multi_turn

EvalItem: TypeAlias = Sample | MultiTurnItem | AgentItem


class EvalSetError(LoopToolError, ValueError):
    pass


def _split_limit(spec: str) -> tuple[str, int | None]:
    head, _, tail = spec.rpartition(":")
    return (head, int(tail)) if head and tail.isdigit() else (spec, None)


def load_eval_sets(specs: list[str]) -> list[EvalItem]:
    """Every set's items, in order. A row that does not import is an error here: silently
    scoring fewer items would change what the numbers mean."""
    items: list[EvalItem] = []
    for spec in specs:
        source, limit = _split_limit(spec)
        loaded: list[EvalItem]
        if source.startswith("bfcl:") and source.removeprefix("bfcl:") in bfcl_reference.MULTI_TURN_CATEGORIES:
            loaded = list(load_multi_turn(source.removeprefix("bfcl:")))
        elif Path(source).name.startswith("data_agent_"):  # ACEBench's agent tasks: played, not imported
            loaded = list(_agent_set(spec, Path(source)))
        else:
            loaded = list(_import_set(spec, source))
        items.extend(loaded[:limit])
    return items


def _agent_set(spec: str, questions: Path) -> list[AgentItem]:
    if not questions.exists():
        raise EvalSetError(f"evaluation set {spec!r}: {questions} does not exist")
    try:
        return load_agent_items(questions, answer_path(questions))
    except AgentSetError as exc:
        raise EvalSetError(f"evaluation set {spec!r}: {exc}") from None


def _import_set(spec: str, source: str) -> list[Sample]:
    official = source.startswith("bfcl:")
    if official:
        questions, answers = bfcl_reference.category_files(source.removeprefix("bfcl:"))
    else:
        questions = Path(source)
        answers = answer_path(questions)
        answers = answers if answers.exists() else None
    if not Path(questions).exists():
        raise EvalSetError(f"evaluation set {spec!r}: {questions} does not exist")
    fmt = "bfcl" if official else detect_format(questions)[0]
    if fmt not in BENCHMARKS:
        raise EvalSetError(f"evaluation set {spec!r}: {questions} is in {fmt} layout, not BFCL's or ACEBench's")
    report = import_file(questions, fmt, answers)
    if report.errors:
        raise EvalSetError(f"evaluation set {spec!r}: {report.summary()}; first: {report.errors[0]}")
    if official:
        for sample in report.samples:
            sample.meta["benchmark"] = "bfcl"
    return report.samples


def single_turn(items: list[EvalItem]) -> list[Sample]:
    """The items that are samples (what decontamination compares training data with)."""
    return [item for item in items if isinstance(item, Sample)]


async def evaluate(
    client: ModelClient, model: str, items: list[EvalItem], max_tokens: int, user: UserSimulator | None = None
) -> list[ScoredItem]:
    """Greedy predictions for every item, scored; unparseable replies and requests the server
    refuses (a prompt over its context length) score as failures. ``user`` plays the user in
    ACEBench's multi-turn agent tasks."""
    scored: list[ScoredItem | None] = [None] * len(items)

    async def one(index: int, item: EvalItem) -> None:
        if isinstance(item, MultiTurnItem):
            scored[index] = await evaluate_multi_turn(client, model, item, max_tokens)
            return
        if isinstance(item, AgentItem):
            scored[index] = await evaluate_agent(client, model, item, max_tokens, user)
            return
        benchmark = str(item.meta.get("benchmark", ""))
        try:
            prediction = await client.predict(item, model, max_tokens=max_tokens)
        except ModelRequestError as exc:  # e.g. a prompt over the context length: this item fails
            scored[index] = score_item(item, CheckResult(False, "refused", str(exc)[:500]), benchmark)
            return
        reply = Reply(
            text=prediction.raw,
            calls=None if prediction.error_type else prediction.calls,
            parse_error=prediction.error,
            function_calls=prediction.from_tool_calls,
        )
        scored[index] = score_item(item, reply, benchmark)

    async with anyio.create_task_group() as tg:
        for index, item in enumerate(items):
            tg.start_soon(one, index, item)
    return [item for item in scored if item is not None]


__all__ = ["EvalItem", "EvalSetError", "evaluate", "load_eval_sets", "metrics", "single_turn"]
