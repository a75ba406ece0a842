"""LoopTool's AST checker vs BFCL's own ``ast_checker``: items/s and verdict agreement.

    .venv/bin/python bench/checker_vs_bfcl.py [--repeat 5]

Items: every entry of BFCL's Python AST categories (from the ``bfcl-eval`` package), each
checked with its label and with seven corruptions of it (looptool.worlds.noise), so that both
passing and failing paths are timed. Both checkers get the same decoded calls; the best of
``--repeat`` timings is reported for each, measured alternately in one process.
"""

from __future__ import annotations

import argparse
import random
import time

import msgspec

from looptool.data import bfcl_reference
from looptool.data.checker import check
from looptool.data.formats import import_file
from looptool.data.worlds.noise import PREDICTION_ERRORS

CATEGORIES = [
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
]


def items() -> list[tuple[list, list, list, str]]:
    out = []
    for category in CATEGORIES:
        questions, answers = bfcl_reference.category_files(category)
        rng = random.Random(category)
        for sample in import_file(questions, "bfcl", answers).samples:
            functions = [
                {"name": t.function.name, "description": t.function.description, "parameters": t.function.parameters}
                for t in sample.tools
            ]
            for calls in [sample.label] + [
                noise(sample.label, sample.tools, rng) for noise in PREDICTION_ERRORS.values()
            ]:
                if calls is not None:
                    out.append((functions, calls, sample.meta["possible_answer"], category))
    return out


def main(repeat: int) -> None:
    cases = items()
    reference = bfcl_reference.ast_checker()
    from bfcl_eval.constants.enums import Language

    # BFCL takes model output as [{name: args}]; convert once, outside the timed loop.
    bfcl_inputs = [(f, [{c.name: dict(c.arguments)} for c in calls], a, cat) for f, calls, a, cat in cases]
    timings: dict[str, list[float]] = {"looptool": [], "bfcl": []}
    for _ in range(repeat):
        start = time.perf_counter()
        ours = [check(f, calls, a, cat) for f, calls, a, cat in cases]
        timings["looptool"].append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs = [
            reference(f, out, a, Language.PYTHON, cat, bfcl_reference.REFERENCE_MODEL) for f, out, a, cat in bfcl_inputs
        ]
        timings["bfcl"].append(time.perf_counter() - start)
    same_valid = sum(o.valid == t["valid"] for o, t in zip(ours, theirs, strict=False))
    same_type = sum(
        o.valid == t["valid"] and (o.valid or o.error_type == t["error_type"])
        for o, t in zip(ours, theirs, strict=False)
    )
    rate = {name: len(cases) / min(values) for name, values in timings.items()}
    print(
        msgspec.json.encode(
            {
                "items": len(cases),
                "failing_items": sum(not o.valid for o in ours),
                "items_per_s": {name: round(value) for name, value in rate.items()},
                "ratio": round(rate["looptool"] / rate["bfcl"], 3),
                "identical_verdicts": same_valid,
                "identical_verdicts_and_error_types": same_type,
                "goal": "ratio >= 1.0, identical verdicts",
            }
        ).decode()
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    main(parser.parse_args().repeat)
