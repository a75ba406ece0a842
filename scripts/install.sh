#!/usr/bin/env bash
# Install LoopTool into ./.venv with everything the test suite needs.
# Usage: bash scripts/install.sh        (idempotent; re-run after pulling)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
# BFCL's data files and reference checker. --no-deps: it pins numpy 1.26 and dozens of model
# SDKs that LoopTool never imports (see looptool/bfcl_reference.py).
.venv/bin/python -m pip install --quiet --no-deps "bfcl-eval==2026.3.23"
echo "LoopTool installed in .venv ($(.venv/bin/looptool --help >/dev/null && echo ok))"
