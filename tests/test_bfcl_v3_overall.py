"""BFCL v3's overall (the number the LoopTool paper reports) against BFCL v3's own leaderboard code.

bfcl-eval 2025.8.6.2, the last release before BFCL V4 changed the overall's weights, is installed
beside the current bfcl-eval (``scripts/install.sh``: ``.venv/bfcl-eval-v3``) and run in a
subprocess on the same score tables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from looptool.data import bfcl_reference

V3_PACKAGE = Path(sys.prefix) / "bfcl-eval-v3"
V3_NAMES = {"simple_python": "simple", "simple_java": "java", "simple_javascript": "javascript"}
NON_LIVE = ["simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple"]
LIVE = ["live_simple", "live_multiple", "live_parallel", "live_parallel_multiple", "live_irrelevance", "live_relevance"]
MULTI_TURN = list(bfcl_reference.MULTI_TURN_CATEGORIES)


def table(categories: list[str], seed: int) -> dict[str, tuple[int, int]]:
    """Scores that differ per category (and per table), with totals like a smoke run's."""
    return {c: ((i * 7 + seed * 3) % 11, 11 + (i + seed) % 5) for i, c in enumerate(categories)}


TABLES = {
    "every category": table([*NON_LIVE, "irrelevance", *LIVE, *MULTI_TURN], 1),
    "multi-turn only": table(MULTI_TURN, 2),
    "some non-live and multi-turn, no live": table(["simple_python", "parallel", "irrelevance", *MULTI_TURN[:2]], 3),
    "all of live, Python simple only": table(["simple_python", *LIVE], 4),
    # the missing live categories count 0 with their files' sizes (the same in v3's data and V4's)
    "some of live": table(["live_simple", "live_irrelevance", "live_relevance", *MULTI_TURN], 5),
    "perfect": {c: (9, 9) for c in [*NON_LIVE, "irrelevance", *LIVE, *MULTI_TURN]},
}


def bfcl_v3(scores: dict[str, tuple[int, int]]) -> float:
    assert V3_PACKAGE.is_dir(), f"{V3_PACKAGE} is missing: run scripts/install.sh"
    v3_table = {V3_NAMES.get(c, c): {"accuracy": ok / total, "total_count": total} for c, (ok, total) in scores.items()}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "bfcl_v3_board.py")],
        input=json.dumps(v3_table),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(V3_PACKAGE)},
        check=True,
    )
    return float(json.loads(done.stdout)["Overall Acc"].rstrip("%")) / 100


@pytest.mark.parametrize("name", list(TABLES))
def test_v3_overall_equals_bfcl_v3s_own_leaderboard(name: str) -> None:
    scores = TABLES[name]
    ours = bfcl_reference.v3_overall(scores)
    assert ours == pytest.approx(bfcl_v3(scores), abs=5e-5)  # BFCL's table has two decimals of a percent
    assert ours != pytest.approx(bfcl_reference.leaderboard(scores)["overall"], abs=1e-3)  # not V4's weights
