"""BFCL's own AST checker and data files, from the ``bfcl-eval`` package, for parity checks.

``bfcl-eval`` is installed with ``--no-deps`` (it pins numpy 1.26 and dozens of model SDKs).
Its checker module imports the model registry only to decide whether a model writes dotted
names with underscores; we register a stand-in registry that answers "no" for every model, so
the checker's functions load without the SDKs. Nothing else of BFCL is replaced.
"""

from __future__ import annotations

import importlib.resources
import sys
import types
from collections import defaultdict
from pathlib import Path
from typing import Any

from looptool.data.samples import ToolCall

REFERENCE_MODEL = "looptool-reference"


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


def ast_checker() -> Any:
    """BFCL's ``ast_checker`` function (Python language semantics via ``check_python``)."""
    if "bfcl_eval.constants.model_config" not in sys.modules:
        registry = types.ModuleType("bfcl_eval.constants.model_config")
        registry.MODEL_CONFIG_MAPPING = defaultdict(lambda: types.SimpleNamespace(underscore_to_dot=False))  # type: ignore[attr-defined]
        sys.modules["bfcl_eval.constants.model_config"] = registry
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
