"""Build a tiny Qwen2-architecture model and its tokenizer from configs — no hub access.

For tests and the offline demo: the tokenizer is a byte-level BPE trained with ``tokenizers``
on text from the synthetic world (so tool calls tokenize sensibly), with ``<tool_call>`` tags as
added tokens (vLLM's hermes tool parser looks them up in the vocabulary) and a chat template
that renders tools, tool calls and tool results the way Qwen's does. Weights are random
(seeded): the model's output is garbage, which is exactly what the probe/judge/expander
robustness tests need. hidden 128 with 2 heads gives head_dim 64, the smallest the vLLM CPU
attention backend accepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from looptool.llm.chatml import CHAT_TEMPLATE

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TAG_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]


def _corpus(n_samples: int, seed: int) -> list[str]:
    import msgspec

    from looptool.data.calls import format_tool_call_blocks
    from looptool.data.worlds.synthetic import build

    encoder = msgspec.json.Encoder()
    texts = []
    for sample in build(n_samples, 0, seed=seed).train:
        texts.append(encoder.encode(sample.tools).decode())
        texts.extend(m.content or "" for m in sample.messages)
        texts.append(format_tool_call_blocks(sample.label))
    return texts


def build_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    vocab_size: int = 1024,
    hidden_size: int = 128,
    layers: int = 2,
    family: str | None = None,
) -> Path:
    """Write a tiny random model + tokenizer to ``out_dir`` (idempotent); returns it.

    Without ``family``: a Qwen2 architecture with LoopTool's own template above. With one of
    :data:`looptool.llm.families.FAMILIES`: that family's architecture, its original chat template
    (TRL's copy) and its control tokens — Llama's tokenizer adds ``<|begin_of_text|>`` itself, as
    the real one does, so a path that tokenizes a rendered prompt naively doubles it."""
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from looptool.llm.families import FAMILIES, original_template

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    chosen = FAMILIES[family] if family else None
    llama = chosen is not None and chosen.name.startswith("llama")
    special = list(chosen.special_tokens if chosen else SPECIAL_TOKENS)
    tags = [] if llama else TAG_TOKENS
    special = [token for token in special if token not in tags]

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(400, seed), trainer=trainer)
    tokenizer.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in tags])
    if llama:
        bos = "<|begin_of_text|>"
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
        )
        eos, pad, bos_token = "<|eot_id|>", "<|end_of_text|>", bos
    else:
        eos, pad, bos_token = "<|im_end|>", "<|endoftext|>", None
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=eos,
        pad_token=pad,
        bos_token=bos_token,
        unk_token=None,
        additional_special_tokens=[t for t in special if t not in (eos, pad, bos_token)],
    )
    fast.chat_template = original_template(chosen) if chosen else CHAT_TEMPLATE
    fast.model_max_length = 4096
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    model = _random_model(chosen.name if chosen else "qwen2_5", fast, hidden_size, layers)
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out


def _random_model(family: str, tokenizer: Any, hidden_size: int, layers: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    config_class: Any
    model_class: Any
    if family.startswith("llama"):
        config_class, model_class = LlamaConfig, LlamaForCausalLM
    elif family == "qwen3":
        config_class, model_class = Qwen3Config, Qwen3ForCausalLM
    else:
        config_class, model_class = Qwen2Config, Qwen2ForCausalLM
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=hidden_size // 2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        # LoRA cannot rescale the (tied) embeddings or the final norm, so the initial weight scale
        # bounds how confident the model can ever get; at the usual 0.02 a trained adapter stays
        # stuck near the uniform loss (~6.9 nats), at 0.3 it reaches ~1.8 on the same data.
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    return model_class(config)
