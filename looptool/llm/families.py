"""Model families: the chat template, vLLM tool parser and end-of-turn tokens that go together.

A family is recognised the way TRL recognises templates — by the exact text of the tokenizer's
chat template against the originals TRL ships in ``trl/chat_templates/`` — so a fine-tuned
checkpoint that kept its family's template is detected, and one with an edited template is
not (then the server's tool parser must be chosen by hand; ``looptool up`` falls back to hermes).

Training tokenizes each sample as its prompt, rendered by the serving template itself with
``add_generation_prompt=True`` exactly as vLLM renders it, followed by the labelled turn, the only
tokens with loss (:func:`looptool.loop.training.prepare_sft`). So no ``{% generation %}``-tagged
training template is needed — TRL has none for Llama 3.1/3.2 — and the prompt trained on is the
prompt served (``tests/test_families.py`` checks the token ids against vLLM's). The labelled
turn is rendered from the message vLLM would render in a conversation — arguments as objects
(:func:`looptool.llm.rendering.template_rendered`) — and the family's own vLLM tool parser reads
it back into the label's calls.
"""

from __future__ import annotations

import json
import os
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import msgspec

from looptool.llm.chatml import CHAT_TEMPLATE


class Family(msgspec.Struct, frozen=True):
    name: str
    # The file in TRL's chat_templates/ that identifies the family; "" for LoopTool's own ChatML
    # tool template (:mod:`looptool.llm.chatml`), which models whose template has no tools get.
    template: str
    tool_parser: str  # vLLM's --tool-call-parser for this family's call syntax
    end_of_turn: tuple[str, ...]  # tokens that end an assistant turn (stop tokens)
    special_tokens: tuple[str, ...]  # the family's control tokens (a tiny model's tokenizer carries them)
    # Qwen3's template takes enable_thinking; None: the template has no such switch.
    thinking: bool | None = None
    single_call: bool = False  # the template renders at most one tool call per assistant turn

    def template_kwargs(self, thinking: bool | None = None) -> dict[str, Any]:
        """``chat_template_kwargs`` for this family (to the server and to the trainer alike)."""
        if self.thinking is None:
            return {}
        return {"enable_thinking": self.thinking if thinking is None else thinking}


_QWEN_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_QWEN_TAGS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>")
_LLAMA_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
)

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("chatml", "", "hermes", ("<|im_end|>",), _QWEN_TOKENS + _QWEN_TAGS),
        Family("qwen2_5", "qwen2_5.jinja", "hermes", ("<|im_end|>",), _QWEN_TOKENS + _QWEN_TAGS),
        Family("qwen3", "qwen3.jinja", "hermes", ("<|im_end|>",), _QWEN_TOKENS + _QWEN_TAGS, thinking=False),
        Family("llama3_1", "llama3_1.jinja", "llama3_json", ("<|eot_id|>", "<|eom_id|>"), _LLAMA_TOKENS, None, True),
        Family("llama3_2", "llama3_2.jinja", "llama3_json", ("<|eot_id|>", "<|eom_id|>"), _LLAMA_TOKENS, None, True),
    )
}


# What ends an assistant turn in a served reply: every family's end-of-turn tokens, and the
# end-of-sequence tokens of models of no known family.
END_OF_TURN = frozenset(token for family in FAMILIES.values() for token in family.end_of_turn) | {
    "</s>",
    "<|endoftext|>",
}


@cache
def original_template(family: Family) -> str:
    """The family's original chat template, as TRL ships it (LoopTool's own for ``chatml``)."""
    if not family.template:
        return CHAT_TEMPLATE
    return (files("trl") / "chat_templates" / family.template).read_text()


def detect(chat_template: str | dict[str, str] | None) -> Family | None:
    """The family whose original template this is, exactly; None for any other template."""
    if isinstance(chat_template, dict):  # named variants: the default one identifies
        chat_template = chat_template.get("default")
    if not chat_template:
        return None
    for family in FAMILIES.values():
        if chat_template == original_template(family):
            return family
    return None


def model_chat_template(model_dir: str | os.PathLike[str]) -> str | None:
    """The chat template a model directory carries (``chat_template.jinja``, as transformers 5
    saves it, or the ``chat_template`` of ``tokenizer_config.json``); None when it has none."""
    directory = Path(model_dir)
    if (directory / "chat_template.jinja").exists():
        return (directory / "chat_template.jinja").read_text()
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    template = config.get("chat_template")
    if isinstance(template, list):  # named variants
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def model_family(model_dir: str | os.PathLike[str]) -> Family | None:
    return detect(model_chat_template(model_dir))
