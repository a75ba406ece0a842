"""Run configs: clear errors for bad files, and a run request that carries its seed data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from helpers import make_settings, read_all

from looptool.app.runs import submit_run
from looptool.data.formats import decode_samples, write_samples
from looptool.data.worlds.synthetic import build
from looptool.kernel.bus import Bus
from looptool.loop.events import RunRequested
from looptool.loop.runconfig import RunConfig, RunConfigError, load_run_config

FIXTURES = Path(__file__).parent / "fixtures" / "formats"


def test_run_config_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[run]\nrun = "ok"\nroundz = 3\n')
    with pytest.raises(RunConfigError, match=rf"{path}: Object contains unknown field `roundz`"):
        load_run_config(path)
    path.write_text('[run]\nrun = "no.dots"\n')
    with pytest.raises(RunConfigError, match="run name 'no.dots' must match"):
        load_run_config(path)
    with pytest.raises(RunConfigError, match="run config not found"):
        load_run_config(tmp_path / "missing.toml")


def test_relative_seed_paths_are_relative_to_the_config(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "run.toml"
    path.parent.mkdir()
    path.write_text(
        '[run]\nrun = "r1"\nseed_path = "../data/seed.jsonl"\nrounds = 2\nppl_cut = { mode = "threshold", value = 3.5 }\n'
    )
    config = load_run_config(path)
    assert config.seed_path == str((tmp_path / "data" / "seed.jsonl").resolve())
    assert config.ppl_cut.mode == "threshold" and config.ppl_cut.value == 3.5


def test_a_run_request_carries_its_uploaded_seed_data(nats_server, run_id, tmp_path: Path) -> None:
    samples = build(25, 0, seed=4).train
    write_samples(samples, tmp_path / "seed.jsonl")

    async def main() -> tuple[RunRequested, bytes]:
        bus = await Bus.connect(make_settings(nats_server.url).nats)
        try:
            await submit_run(bus, RunConfig(run=run_id, seed_path=str(tmp_path / "seed.jsonl"), rounds=2))
            (request,) = await read_all(bus, run_id, RunRequested)
            return request, await bus.get_artifact(request.config.seed_data)
        finally:
            await bus.close()

    request, data = anyio.run(main)
    assert request.config.rounds == 2
    assert decode_samples(data) == samples


def test_seed_data_with_bad_rows_is_refused_with_their_place(nats_server, tmp_path: Path) -> None:
    run = tmp_path / "run.toml"
    run.write_text(f'[run]\nrun = "badseed"\nseed_path = "{FIXTURES / "xlam.jsonl"}"\nseed_format = "xlam"\n')
    result = subprocess.run(
        [sys.executable, "-m", "looptool", "run", str(run), "--detach"],
        env={**os.environ, "LOOPTOOL_NATS__URL": nats_server.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{FIXTURES / 'xlam.jsonl'}: 4 rows: 1 imported, 3 rejected" in result.stderr
    assert "xlam.jsonl:2: answers" in result.stderr
