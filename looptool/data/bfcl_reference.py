"""BFCL's own AST checker and data files, from the ``bfcl-eval`` package, for parity checks.

``bfcl-eval`` is installed with ``--no-deps`` (it pins numpy 1.26 and dozens of model SDKs).
Its checker and leaderboard modules import the model registry only to decide whether a model
writes dotted names with underscores and what to print beside a score; we register a stand-in
registry that answers the same for every model, so BFCL's own functions load without the SDKs.
Nothing else of BFCL is replaced: its checkers, its multi-turn backends and its leaderboard
arithmetic (the overall score's weights) are called as they are.
"""

from __future__ import annotations

import importlib.resources
import sys
import types
from collections import defaultdict
from pathlib import Path
from typing import Any

from looptool.data.calls import CallParseError
from looptool.data.samples import ToolCall

REFERENCE_MODEL = "looptool-reference"
MULTI_TURN_CATEGORIES = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")


def data_dir() -> Path:
    try:
        return Path(str(importlib.resources.files("bfcl_eval") / "data"))
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "bfcl-eval is not installed: `pip install --no-deps bfcl-eval` (scripts/install.sh does)"
        ) from None


def category_files(category: str) -> tuple[Path, Path | None]:
    """``(questions, possible answers or None)`` for one BFCL category, e.g. ``live_simple``."""
    base = data_dir()
    questions = base / f"BFCL_v4_{category}.json"
    answers = base / "possible_answer" / f"BFCL_v4_{category}.json"
    return questions, answers if answers.exists() else None


def _stand_in_registry() -> None:
    """BFCL's model registry imports every model SDK; its checkers and leaderboard only read a
    few fields of a model's entry, answered here the same way for every model."""
    if "bfcl_eval.constants.model_config" in sys.modules:
        return
    entry = types.SimpleNamespace(
        underscore_to_dot=False,
        display_name=REFERENCE_MODEL,
        url="",
        org="",
        license="",
        input_price=None,
        output_price=None,
    )
    registry = types.ModuleType("bfcl_eval.constants.model_config")
    registry.MODEL_CONFIG_MAPPING = defaultdict(lambda: entry)  # type: ignore[attr-defined]
    sys.modules["bfcl_eval.constants.model_config"] = registry


def ast_checker() -> Any:
    """BFCL's ``ast_checker`` function (Python language semantics via ``check_python``)."""
    _stand_in_registry()
    from bfcl_eval.eval_checker.ast_eval import ast_checker as module

    return module.ast_checker


def check_python(
    functions: list[dict[str, Any]], calls: list[ToolCall], answer: list[Any], category: str
) -> dict[str, Any]:
    """Run BFCL's checker on our calls (as BFCL's ``[{name: args}]`` model output)."""
    from bfcl_eval.constants.enums import Language

    output = [{call.name: dict(call.arguments)} for call in calls]
    result: dict[str, Any] = ast_checker()(functions, output, answer, Language.PYTHON, category, REFERENCE_MODEL)
    return result


def _decode_ast_prompting(text: str) -> list[dict[str, Any]]:
    from bfcl_eval.model_handler.utils import default_decode_ast_prompting

    try:
        return list(default_decode_ast_prompting(text))
    except Exception as exc:  # its decoder raises whatever ast and its asserts raise
        raise CallParseError(f"Invalid syntax. Failed to decode AST. {exc}"[:500], text[:200]) from None


def _calls(decoded: list[dict[str, Any]]) -> list[ToolCall]:
    return [ToolCall(name, dict(arguments)) for call in decoded for name, arguments in call.items()]


def decode_execute_prompting(text: str) -> list[ToolCall]:
    """A prompt-mode reply read as BFCL reads one before executing it in a multi-turn entry
    (its ``decode_execute``: the same decoder, no format check). Raises :class:`CallParseError`."""
    return _calls(_decode_ast_prompting(text))


def decode_prompting(text: str) -> list[ToolCall]:
    """A prompt-mode reply read as BFCL reads it: bfcl-eval's own ``default_decode_ast_prompting``
    (its open models' decoder: backticks and newlines stripped at the ends, brackets added, one
    Python expression of calls), then its format check. Raises :class:`CallParseError` with
    BFCL's reason; an irrelevance item counts that as "no call", as BFCL does."""
    from bfcl_eval.utils import is_function_calling_format_output

    decoded = _decode_ast_prompting(text)
    if not is_function_calling_format_output(decoded):
        raise CallParseError("Did not output in the specified format.", text[:200])
    return _calls(decoded)


# The leaderboard's columns we report, as BFCL names them (``data_overall.csv``).
LEADERBOARD_COLUMNS = {
    "overall": "Overall Acc",
    "non_live": "Non-Live AST Acc",
    "live": "Live Acc",
    "multi_turn": "Multi Turn Acc",
    "relevance": "Relevance Detection",
    "irrelevance": "Irrelevance Detection",
}


def leaderboard(scores: dict[str, tuple[int, int]]) -> dict[str, float]:
    """BFCL's summary scores from ``category -> (correct, total)``, computed by BFCL's own
    leaderboard code (``generate_leaderboard_csv``) and read back from the table it writes. As
    on BFCL's leaderboard, a category that was not scored counts 0 in the overall; a summary
    none of whose categories was scored is left out."""
    import contextlib
    import csv
    import io
    import tempfile

    _stand_in_registry()
    from bfcl_eval.eval_checker.eval_runner_helper import generate_leaderboard_csv

    table = {
        category: {"accuracy": ok / total, "total_count": total} for category, (ok, total) in scores.items() if total
    }
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        generate_leaderboard_csv({REFERENCE_MODEL: table}, Path(out))
        with open(Path(out) / "data_overall.csv", newline="") as f:
            (row,) = list(csv.DictReader(f))
    return {
        name: float(row[column].rstrip("%")) / 100
        for name, column in LEADERBOARD_COLUMNS.items()
        if row[column] != "N/A" and (name == "overall" or _covers(name, scores))
    }


def v3_overall(scores: dict[str, tuple[int, int]]) -> float:
    """BFCL v3's overall accuracy, the number the LoopTool paper reports, from ``category ->
    (correct, total)``: BFCL's leaderboard formula before its V4 release (``generate_leaderboard_csv``
    of bfcl-eval 2025.8.6.2), the unweighted mean of

    - non-live: the unweighted mean of simple (itself the mean of Python, Java and JavaScript),
      multiple, parallel, parallel multiple and irrelevance;
    - live: the item-weighted mean of live simple, multiple, parallel, parallel multiple,
      irrelevance and relevance;
    - multi-turn: the unweighted mean of its four categories.

    As there, a category not scored counts 0, in the live mean with the size of its data file
    (V4's files here; v3's differ by a few items in live irrelevance and relevance)."""

    def accuracy(category: str) -> float:
        ok, total = scores.get(category, (0, 0))
        return ok / total if total else 0.0

    def size(category: str) -> int:
        total = scores.get(category, (0, 0))[1]
        return total or sum(1 for line in category_files(category)[0].read_text().splitlines() if line.strip())

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    simple = mean([accuracy(c) for c in ("simple_python", "simple_java", "simple_javascript")])
    non_live = mean([simple, *(accuracy(c) for c in ("multiple", "parallel", "parallel_multiple", "irrelevance"))])
    live_categories = [*_GROUPS["live"], "live_irrelevance", "live_relevance"]
    if any(category in scores for category in live_categories):
        weights = {category: size(category) for category in live_categories}
        live = sum(accuracy(c) * weights[c] for c in live_categories) / sum(weights.values())
    else:
        live = 0.0  # nothing scored: every category counts 0, whatever its size
    multi_turn = mean([accuracy(c) for c in MULTI_TURN_CATEGORIES])
    return mean([non_live, live, multi_turn])


_GROUPS = {
    "non_live": ("simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple"),
    "live": ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple"),
    "multi_turn": MULTI_TURN_CATEGORIES,
    "relevance": ("live_relevance",),
    "irrelevance": ("irrelevance", "live_irrelevance"),
}


def _covers(group: str, scores: dict[str, tuple[int, int]]) -> bool:
    return any(category in scores for category in _GROUPS[group])


# --------------------------------------------------------------------------- multi-turn


def multi_turn_entries(category: str) -> list[tuple[dict[str, Any], list[list[str]]]]:
    """``(entry, ground truth)`` for a BFCL multi-turn category, loaded by BFCL's own loader: the
    backends' function docs filled in, ``miss_func``'s held-out docs moved to ``missed_function``."""
    from bfcl_eval.utils import load_dataset_entry, load_ground_truth_entry

    truth = {row["id"]: row["ground_truth"] for row in load_ground_truth_entry(category)}
    return [(entry, truth[entry["id"]]) for entry in load_dataset_entry(category)]


def backend_methods(entry: dict[str, Any]) -> set[str]:
    """The public methods of an entry's backends: the only names a model's call may execute."""
    import importlib
    import inspect

    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING

    methods = set()
    for class_name in entry["involved_classes"]:
        backend = getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[class_name]), class_name)
        methods |= {name for name, _ in inspect.getmembers(backend, inspect.isfunction) if not name.startswith("_")}
    return methods


def execute(calls: list[str], entry: dict[str, Any], instance: str) -> list[str]:
    """Run call strings in the entry's backends, BFCL's way; the backends' state lives on in
    bfcl-eval's module under ``instance`` (one per rollout) until :func:`forget`."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import execute_multi_turn_func_call

    results, _ = execute_multi_turn_func_call(
        calls,
        entry.get("initial_config", {}),
        entry["involved_classes"],
        instance,
        entry["id"],
        long_context="long_context" in entry["id"],
        is_evaL_run=False,
    )
    return list(results)


def check_multi_turn(
    turns: list[list[list[str]]], truth: list[list[str]], entry: dict[str, Any], instance: str
) -> dict[str, Any]:
    """BFCL's verdict on a rollout (``_evaluate_single_multi_turn_entry``'s rules): a rollout
    cut short by the step limit fails; otherwise ``multi_turn_checker`` replays every turn
    against the ground truth's and compares the backends' states and the results."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    if len(turns) != len(truth):
        return {
            "valid": False,
            "error_type": "multi_turn:force_terminated",
            "error_message": f"the rollout ended after {len(turns)} of {len(truth)} turns",
        }
    category = entry["id"].rsplit("_", 1)[0]
    decoded = [[step for step in turn if step] for turn in turns]
    return dict(multi_turn_checker(decoded, truth, entry, category, instance))


def forget(instance: str) -> None:
    """Drop the backends a rollout and its check left in bfcl-eval's module."""
    import re

    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    prefix = re.sub(r"[-./:]", "_", instance) + "_"
    for name in [n for n in vars(multi_turn_utils) if n.startswith(prefix)]:
        delattr(multi_turn_utils, name)
