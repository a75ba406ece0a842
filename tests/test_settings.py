from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from looptool.kernel.settings import SettingsError
from looptool.loop.settings import load_settings


def test_defaults_file_and_env_layer_in_that_order(tmp_path: Path) -> None:
    config = tmp_path / "looptool.toml"
    config.write_text('[nats]\nurl = "nats://file:4222"\n[runtime]\nconcurrency = 3\nmax_deliver = 9\n')
    settings = load_settings(
        config, environ={"LOOPTOOL_RUNTIME__MAX_DELIVER": "7", "LOOPTOOL_RUNTIME__BACKOFF": "[1, 2.5]"}
    )
    assert settings.nats.url == "nats://file:4222"
    assert settings.runtime.concurrency == 3
    assert settings.runtime.max_deliver == 7  # env wins over the file
    assert settings.runtime.backoff == [1.0, 2.5]
    assert settings.runtime.ack_wait == 30.0  # untouched default


def test_config_path_may_come_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[log]\nformat = "json"\n')
    assert load_settings(environ={"LOOPTOOL_CONFIG": str(config)}).log.format == "json"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"LOOPTOOL_RUNTIME__MAX_DELIVER": "many"},
            r"LOOPTOOL_RUNTIME__MAX_DELIVER: bad setting runtime\.max_deliver: Expected `int`",
        ),
        ({"LOOPTOOL_NATS__URLL": "x"}, r"LOOPTOOL_NATS__URLL: bad setting nats\.urll: .*unknown field"),
        ({"LOOPTOOL_LOG__LEVEL": "loud"}, r"LOOPTOOL_LOG__LEVEL: bad setting log\.level: Invalid enum value 'loud'"),
        ({"LOOPTOOL_RUNTIME__BACKOFF": '[1, "x"]'}, r"LOOPTOOL_RUNTIME__BACKOFF: bad setting runtime\.backoff\[1\]"),
    ],
)
def test_bad_environment_values_name_the_variable(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(SettingsError, match=expected):
        load_settings(environ=environ)


def test_bad_file_values_name_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[runtime]\nconcurrency = 'lots'\n")
    with pytest.raises(SettingsError, match=rf"{config}: bad setting runtime\.concurrency"):
        load_settings(config, environ={})
    config.write_text("[runtime\n")
    with pytest.raises(SettingsError, match=rf"{config}: invalid TOML"):
        load_settings(config, environ={})
    with pytest.raises(SettingsError, match="settings file not found"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_cli_reports_bad_settings_in_one_line() -> None:
    env = {**os.environ, "LOOPTOOL_RUNTIME__CONCURRENCY": "-"}
    result = subprocess.run([sys.executable, "-m", "looptool", "event-types"], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("looptool: error: LOOPTOOL_RUNTIME__CONCURRENCY: bad setting runtime.concurrency")
    assert "Traceback" not in result.stderr


def test_a_trainer_asked_for_qlora_without_a_gpu_refuses_to_start() -> None:
    from looptool.loop.settings import TrainerSettings
    from looptool.loop.training import check_trainer_settings, training_dtype

    with pytest.raises(SettingsError, match="load_in_4bit .* needs a CUDA GPU"):
        check_trainer_settings(TrainerSettings(load_in_4bit=True, use_cpu=True))
    check_trainer_settings(TrainerSettings(use_cpu=True))  # the default asks for nothing special
    assert training_dtype(TrainerSettings(use_cpu=True)) == "float32"  # auto on a CPU
    assert training_dtype(TrainerSettings(dtype="bfloat16")) == "bfloat16"  # asked for, given

    # The service refuses before it connects anywhere, with the reason on one line.
    env = {**os.environ, "LOOPTOOL_TRAINER__LOAD_IN_4BIT": "true", "LOOPTOOL_NATS__URL": "nats://127.0.0.1:1"}
    done = subprocess.run(
        [sys.executable, "-m", "looptool", "serve", "trainer"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0 and "load_in_4bit (QLoRA) needs a CUDA GPU" in done.stderr
