"""BFCL v3's own leaderboard code on a score table: run as a script with bfcl-eval 2025.8.6.2 (the
last release before BFCL V4, installed beside the current one by scripts/install.sh) first on
PYTHONPATH. Reads ``{category: {"accuracy", "total_count"}}`` (v3's category names) on stdin and
prints the row of ``data_overall.csv`` that ``generate_leaderboard_csv`` writes, as JSON."""

import contextlib
import csv
import io
import json
import sys
import tempfile
import types
from collections import defaultdict
from pathlib import Path

# The model registry imports every model SDK; the leaderboard reads a few fields of an entry.
entry = types.SimpleNamespace(display_name="ref", url="", org="", license="", input_price=None, output_price=None)
registry = types.ModuleType("bfcl_eval.constants.model_config")
registry.MODEL_CONFIG_MAPPING = defaultdict(lambda: entry)  # type: ignore[attr-defined]
sys.modules["bfcl_eval.constants.model_config"] = registry

from bfcl_eval.eval_checker.eval_runner_helper import generate_leaderboard_csv  # noqa: E402

table = json.load(sys.stdin)
with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
    generate_leaderboard_csv({"ref": table}, Path(out))
    with open(Path(out) / "data_overall.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
print(json.dumps(row))
