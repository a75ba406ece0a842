"""The scale bench's load server answers what the services ask, through the real model client:
its label lookup must key a request exactly as the probe sends it, or the paper-size run would
measure a model that never answers right."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from looptool.data.checker import check_sample
from looptool.data.samples import Sample
from looptool.data.worlds.synthetic import build
from looptool.kernel.nats_server import free_port
from looptool.llm.client import ModelClient, ModelSettings, Prediction

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from load_server import LoadServer, serve  # noqa: E402


def ask(server: LoadServer, samples: list[Sample]) -> list[Prediction]:
    port = free_port()

    async def main() -> list[Prediction]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve, server, port)
            client = ModelClient(ModelSettings(base_url=f"http://127.0.0.1:{port}/v1", unavailable_timeout=30))
            try:
                return [await client.predict(sample, "policy-r0", max_tokens=64) for sample in samples]
            finally:
                await client.close()
                tg.cancel_scope.cancel()

    return anyio.run(main)


def world_samples() -> list[Sample]:
    data = build(24, 1, seed=3, catalogue="rich")  # every category, multi-turn samples included
    assert {s.category for s in data.train} >= {"simple", "multiple", "parallel", "irrelevance"}
    return data.train


def test_a_registered_conversation_is_answered_with_its_label() -> None:
    samples = world_samples()
    server = LoadServer(latency=0.0, error_rate=0.0)
    server.register(samples)
    for sample, prediction in zip(samples, ask(server, samples), strict=True):
        assert check_sample(sample, prediction.calls).valid, (sample.id, prediction.raw)
        assert prediction.token_logprobs  # the probe's perplexity needs them
    assert server.stats()["calls"] == {"policy": len(samples)}


def test_every_corrupted_answer_fails_the_checker_and_unknown_ones_are_counted() -> None:
    samples = world_samples()
    server = LoadServer(latency=0.0, error_rate=1.0)
    server.register(samples[1:])
    predictions = ask(server, samples)
    assert predictions[0].calls == []  # never registered: a plain reply
    for sample, prediction in zip(samples[1:], predictions[1:], strict=True):
        assert not check_sample(sample, prediction.calls).valid, (sample.id, prediction.raw)
    calls = server.stats()["calls"]
    assert calls["policy_unknown"] == 1
    assert calls["policy_corrupted"] == calls["policy"] == len(samples) - 1
