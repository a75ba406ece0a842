"""LoopTool's settings tree: the kernel's sections plus the model endpoints and one section per
service. Read with :func:`load_settings` (defaults, then a TOML file, then ``LOOPTOOL_*``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from looptool.kernel.runtime import Context
from looptool.kernel.settings import KernelSettings, Section, load_settings_tree
from looptool.llm.client import ModelSettings
from looptool.loop.tracking import TrackingSettings


class ProbeSettings(Section):
    ppl: Literal["output", "label"] = "output"
    max_tokens: int = 512
    seed: int = 0
    extra_body: dict[str, Any] = msgspec.field(default_factory=dict)  # passed through to the server


class JudgeSettings(Section):
    mode: Literal["rules", "llm", "cascade"] = "cascade"  # cascade: rules first, LLM for the rest
    models: list[str] = msgspec.field(default_factory=list)  # judge models; empty: judge_model.model
    votes: int = 3  # judge calls per sample (models are cycled; one model is sampled repeatedly)
    quorum: int = 2  # votes needed for a verdict; fewer -> unclear
    temperature: float = 0.7
    max_tokens: int = 512
    reply_retries: int = 1  # extra calls when a reply does not fit the schema, then "unclear"
    grounding: bool = True  # rules tier: argument values must appear in the conversation
    both_right: Literal["keep", "discard"] = "keep"  # the paper says both; you choose
    unclear: Literal["keep", "discard"] = "keep"
    prompt: str = "judge-v1"
    extra_body: dict[str, Any] = msgspec.field(default_factory=dict)


class ExpanderSettings(Section):
    mode: Literal["llm", "world"] = "llm"  # world: the synthetic world's generator, offline
    world_catalogue: Literal["core", "rich"] = "core"  # the world's tools, for mode = "world"
    world_held_out: list[str] = msgspec.field(default_factory=list)  # domains never to write (test-only)
    k: int = 4  # new samples per seed (the paper's k)
    temperature: float = 1.0
    max_tokens: int = 2048
    retries: int = 2  # generator calls per seed when too few samples pass validation
    near_duplicate: float = 0.85  # MinHash Jaccard at or above which a sample is a duplicate
    prompt: str = "expand-v1"
    seed: int = 0
    extra_body: dict[str, Any] = msgspec.field(default_factory=dict)


class TrainerSettings(Section):
    base_model: str = "policy-base"  # a local directory (or hub id where the hub is reachable)
    method: Literal["sft", "grpo"] = "sft"
    continue_from_previous: bool = True  # round r starts from round r-1's adapter (fresh optimizer)
    lora_rank: int = 8  # must be <= the server's --max-lora-rank
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] = msgspec.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    # Micro-batch 2 x accumulation 4 = 8 samples a step. A 49k-token vocabulary's float32 logits
    # (SmolLM2) at micro-batch 8 grew the trainer past 7.4 GB; 2 x 4 stays near 3 GB on a CPU.
    batch_size: int = 2
    gradient_accumulation: int = 4
    max_length: int = 2048  # longer samples are skipped (counted), not truncated
    assistant_only_loss: bool = True  # loss on the labelled assistant turn only
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on a capable GPU, else fp32
    gradient_checkpointing: bool = False  # trade compute for memory (long contexts, 8B on one GPU)
    load_in_4bit: bool = False  # QLoRA: 4-bit NF4 base weights (CUDA + bitsandbytes; refused elsewhere)
    checkpoint_steps: int = 50  # a killed trainer resumes the round from its last checkpoint (0: off)
    logging_steps: int = 5
    seed: int = 0
    use_cpu: bool = False
    grpo_generations: int = 4  # the paper: 16 rollouts
    grpo_max_completion_length: int = 256
    grpo_temperature: float = 1.0
    grpo_beta: float = 0.0  # the paper: no KL term
    grpo_clip_low: float = 0.2
    grpo_clip_high: float = 0.28


class EvaluatorSettings(Section):
    # "bfcl:<category>" for BFCL's own data from the bfcl-eval package (multi-turn included), or
    # question files in BFCL's or ACEBench's layout (answers in possible_answer/ beside them);
    # ":<n>" after a set keeps its first n items. See looptool.loop.evaluation.
    sets: list[str] = msgspec.field(default_factory=list)
    max_tokens: int = 256
    evaluate_base: bool = True  # at round 0, also score the base model
    # Parts each round's evaluation is split into, for evaluator replicas to score in parallel.
    shards: int = 4
    # The model that plays the user in ACEBench's agent_multi_turn tasks (an OpenAI-compatible
    # endpoint); sets with such tasks are refused without one.
    user_simulator: ModelSettings | None = None


class CuratorSettings(Section):
    check_every: float = 5.0  # seconds between checks for stalled or unclosed rounds
    stall_after: float = 600.0  # a round with no progress for this long emits round.stalled
    lease: float = 60.0  # a round complete this long but still unclosed is taken over by a standby


class SynthesisSettings(Section):
    count: int = 100  # samples to attempt
    seed: int = 0
    # The share of each category among the attempts.
    categories: dict[str, float] = msgspec.field(
        default_factory=lambda: {
            "simple": 0.25,
            "multiple": 0.25,
            "parallel": 0.15,
            "parallel_multiple": 0.1,
            "irrelevance": 0.1,
            "missing_parameter": 0.05,
            "multi_turn": 0.1,  # where calls run (an MCP server, an API); else simple
        }
    )
    distractors: int = 2  # extra tools offered with "multiple" and "parallel_multiple" requests
    personas: list[str] = msgspec.field(
        default_factory=lambda: [
            "a busy professional who writes tersely",
            "a student who explains at length",
            "a non-native English speaker",
            "a customer in a hurry who writes in lower case",
        ]
    )
    temperature: float = 0.9  # the user agent's; the assistant agent decodes greedily
    max_tokens: int = 256
    prompt: str = "synthesize-user-v1"
    execute: bool = True  # run the calls where the source can (an MCP server)
    semantics: bool = True  # the judge endpoint ([judge_model], [judge] votes/quorum) checks each sample
    near_duplicate: float = 0.85
    decontaminate: bool = True  # drop samples that leak into the evaluator's sets (evaluator.sets; lint's test)
    # Where the synthesizer *service* may run a job's calls, exactly as a request names them:
    # "mcp:<command line or URL>", "openapi:<base URL>". A request may name any command line,
    # so the service starts only what its own settings list; other jobs run without execution.
    allow_execution: list[str] = msgspec.field(default_factory=list)


class Settings(KernelSettings):
    model: ModelSettings = msgspec.field(default_factory=ModelSettings)
    probe: ProbeSettings = msgspec.field(default_factory=ProbeSettings)
    judge_model: ModelSettings = msgspec.field(default_factory=lambda: ModelSettings(model="judge"))
    judge: JudgeSettings = msgspec.field(default_factory=JudgeSettings)
    generator_model: ModelSettings = msgspec.field(default_factory=lambda: ModelSettings(model="generator"))
    expander: ExpanderSettings = msgspec.field(default_factory=ExpanderSettings)
    trainer: TrainerSettings = msgspec.field(default_factory=TrainerSettings)
    evaluator: EvaluatorSettings = msgspec.field(default_factory=EvaluatorSettings)
    curator: CuratorSettings = msgspec.field(default_factory=CuratorSettings)
    tracking: TrackingSettings = msgspec.field(default_factory=TrackingSettings)
    synthesis: SynthesisSettings = msgspec.field(default_factory=SynthesisSettings)
    artifact_dir: str = ".looptool/artifacts"
    cache_dir: str = ""  # models built once and reused (the demo's toy policy); "": ~/.cache/looptool


def load_settings(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``path`` (or ``$LOOPTOOL_CONFIG``) and the environment."""
    return load_settings_tree(Settings, path, environ)


# What a LoopTool service's handlers get: the kernel's context, its settings this tree.
LoopContext = Context[Settings]
