"""`looptool lint` on a 60k-row file in xLAM's published layout: wall time per stage.

    .venv/bin/python bench/lint_throughput.py [--rows 60000] [--out bench/results/lint_throughput.json]

The rows are the synthetic world's single-turn samples exported as xLAM rows (a JSON array,
``tools``/``answers`` as JSON strings, parameters as JSON Schema — xLAM's flat maps are
converted on import, which this bench does not need to exercise). The goal (issue 12): the
whole lint, BFCL contamination included, in under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from looptool.data.formats import FORMATS, import_file
from looptool.data.lint import bfcl_eval_samples, lint
from looptool.data.worlds.synthetic import build


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    export = FORMATS["xlam"][1]
    rows: list[dict] = []
    seed = 0
    while len(rows) < args.rows:
        rows += [export(s) for s in build(5_000, 0, seed=seed).train if len(s.messages) == 1]
        seed += 1
    rows = rows[: args.rows]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "xlam.json"
        path.write_text(json.dumps(rows))
        started = time.perf_counter()
        report = import_file(path, "xlam", keep_suspect=True)
        imported = time.perf_counter()
        evals = bfcl_eval_samples()
        loaded = time.perf_counter()
        result = lint(path, "xlam", report.samples, report.rows, report.errors, report.duplicates, evals)
        done = time.perf_counter()
    out = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "rows": result.rows,
        "samples": result.samples,
        "import_s": round(imported - started, 2),
        "bfcl_load_s": round(loaded - imported, 2),
        "lint_s": round(done - loaded, 2),
        "total_s": round(done - started, 2),
        "near_duplicates": result.near_duplicates,
        "contaminated": result.contamination.contaminated,
    }
    print(json.dumps(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
