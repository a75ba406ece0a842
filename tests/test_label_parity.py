"""Labels are trained as they are served, in every family: the completion tokens the trainer puts
loss on, decoded, are what vLLM would render for the labelled assistant turn — arguments as a
JSON object, never a quoted string — and the family's own vLLM tool parser reads them back into
exactly the label's calls. Checked on the tokenizers and original templates of Qwen2.5, Qwen3
(thinking off and on), Llama 3.1 and 3.2 (tiny models carrying them), LoopTool's ChatML template,
and the real SmolLM2-135M-Instruct that the demo trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from looptool.data.formats.openai import export_row
from looptool.data.samples import Sample
from looptool.data.worlds.synthetic import build
from looptool.llm.families import FAMILIES, Family, model_family
from looptool.llm.tiny_model import build_tiny_model
from looptool.loop.training import prepare_sft

CASES = [
    ("qwen2_5", None),
    ("qwen3", False),
    ("qwen3", True),
    ("llama3_1", None),
    ("llama3_2", None),
    ("chatml", None),
    ("smollm2", None),
]


def call_samples(family: Family) -> list[Sample]:
    """Samples whose label calls tools with nested, typed and non-ASCII arguments alike."""
    world = build(60, 0, seed=3, catalogue="rich", prior_calls=0.3).train
    chosen = [s for s in world if s.label and (len(s.label) == 1 or not family.single_call)]
    assert any(len(s.label) > 1 for s in chosen) or family.single_call
    assert any(any(m.role == "tool" for m in s.messages) for s in chosen)  # earlier calls in the prompt too
    return chosen[:16]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parity")
    models = {name: build_tiny_model(root / name, family=name) for name in FAMILIES}
    models["smollm2"] = request.getfixturevalue("smollm2")
    return models


@pytest.mark.parametrize(("model", "thinking"), CASES, ids=[f"{m}-think" if t else m for m, t in CASES])
def test_the_trained_label_is_the_served_call_and_parses_back(
    model: str, thinking: bool | None, tokenizers: dict[str, Path]
) -> None:
    from transformers import AutoTokenizer
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.tool_parsers import ToolParserManager

    family = model_family(tokenizers[model])
    assert family is not None and (model == "smollm2" or family.name == model)
    tokenizer = AutoTokenizer.from_pretrained(tokenizers[model])
    parser = ToolParserManager.get_tool_parser(family.tool_parser)(tokenizer)
    batch = call_samples(family)
    prepared = prepare_sft(batch, tokenizer, max_length=8192, template_kwargs=family.template_kwargs(thinking))
    assert prepared.skipped == {}
    for sample, row in zip(batch, prepared.rows, strict=True):
        completion = [i for i, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m]
        text = tokenizer.decode(completion, skip_special_tokens=False)
        assert '"arguments": "' not in text and '"parameters": "' not in text, (sample.id, text)
        tools = export_row(sample)["tools"]
        request = ChatCompletionRequest(model="policy", messages=[{"role": "user", "content": "-"}], tools=tools)
        parsed = parser.extract_tool_calls(text, request)
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in parsed.tool_calls]
        assert calls == [(c.name, c.arguments) for c in sample.label], (sample.id, text)
