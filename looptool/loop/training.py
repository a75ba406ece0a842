"""Training a round: TRL (SFT or GRPO) with PEFT LoRA adapters, on LoopTool samples.

Runs synchronously (the trainer service calls it in a worker thread). Data is rendered the way
the serving vLLM renders requests (:func:`looptool.llm.rendering.template_rendered`: the messages
as vLLM hands them to the chat template, tool-call arguments as objects), so that a model
trained here sees at inference exactly the text it was trained on, and writes its calls as it
was taught. Samples are tokenized here, from Python dicts, so Arrow never "unifies" differently
shaped argument dicts into records full of nulls.

An adapter is written to a temporary directory and renamed into place only when complete, so a
crash mid-training never leaves a half-written adapter where the service would announce it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from looptool.data.checker import sample_answer
from looptool.data.samples import Sample
from looptool.kernel.errors import PermanentError
from looptool.kernel.logs import get_logger
from looptool.kernel.settings import SettingsError
from looptool.llm.rendering import template_rendered
from looptool.loop.rewards import correctness_reward, format_reward
from looptool.loop.settings import TrainerSettings
from looptool.loop.tracking import RoundTracking, trainer_callbacks

ProgressFn = Callable[[dict[str, Any]], None]
log = get_logger("looptool.training")


class TrainingOutcome(msgspec.Struct):
    adapter_dir: str
    steps: int
    losses: list[float]
    tokens: int
    seconds: float
    skipped: dict[str, int] = msgspec.field(default_factory=dict)  # samples not trained on, by reason
    rewards: list[float] = msgspec.field(default_factory=list)  # GRPO: the mean reward of each logged step

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class PreparedSft(msgspec.Struct):
    rows: list[dict[str, Any]]  # tokenized: input_ids and completion_mask, as TRL takes them
    skipped: dict[str, int]  # samples not trained on, by reason


def prepare_sft(
    samples: list[Sample], tokenizer: Any, max_length: int, template_kwargs: dict[str, Any] | None = None
) -> PreparedSft:
    """Each sample tokenized as its context (the prompt) followed by the labelled assistant turn
    (the completion, the only tokens with loss).

    The prompt is rendered by the policy's own chat template with ``add_generation_prompt=True``
    and tokenized without added special tokens — exactly what vLLM does with a request — so the
    ids trained on are the ids served; no generation-tagged training template is involved.
    Tokenizing here, from Python dicts, also keeps Arrow from giving every message every key
    (``tool_calls: None`` on a user turn breaks Llama 3's template). Policy for what cannot be
    trained on: a sample the template refuses (Llama 3.1/3.2 render one call per turn), whose
    prompt the template renders differently once the label follows, or longer than
    ``max_length`` tokens is skipped and counted by reason — never truncated into a label that
    stops mid-call.
    """
    kwargs = template_kwargs or {}

    def ids(messages: list[dict[str, Any]], tools: Any, prompt: bool) -> list[int]:
        text = tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=prompt, tokenize=False, **kwargs
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    rows: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for sample in samples:
        messages, tools = template_rendered(sample, with_label=True)
        try:
            prompt, full = ids(messages[:-1], tools, True), ids(messages, tools, False)
        except Exception as exc:  # jinja2's TemplateError, raise_exception() in the template
            skipped[f"the chat template refuses it: {str(exc)[:120]}"] += 1
            continue
        if full[: len(prompt)] != prompt:
            skipped["the chat template renders the prompt differently once the label follows"] += 1
        elif len(full) > max_length:
            skipped[f"longer than max_length ({max_length} tokens)"] += 1
        else:
            rows.append({"input_ids": full, "completion_mask": [0] * len(prompt) + [1] * (len(full) - len(prompt))})
    return PreparedSft(rows, dict(skipped))


def grpo_rows(
    samples: list[Sample], tokenizer: Any, template_kwargs: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Prompts rendered with the policy's chat template (tools included) as plain text; the
    label travels in ``answer``/``category``/``tools`` columns for the reward functions."""
    rows = []
    for sample in samples:
        messages, tools = template_rendered(sample)
        prompt = tokenizer.apply_chat_template(
            messages,
            tools=tools,
            add_generation_prompt=True,
            tokenize=False,
            **(template_kwargs or {}),
        )
        rows.append(
            {
                "prompt": prompt,
                "tools": json.dumps(tools),
                "answer": json.dumps(sample_answer(sample)),
                "category": sample.category,
            }
        )
    return rows


def _lora_config(settings: TrainerSettings) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )


def _load_model(settings: TrainerSettings, previous_adapter: str | None) -> tuple[Any, Any]:
    """The policy to train: base weights, plus the previous round's adapter when continuing."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(settings.base_model)
    dtype = training_dtype(settings)
    quantization = None
    if settings.load_in_4bit:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=getattr(torch, dtype)
        )
    model = AutoModelForCausalLM.from_pretrained(
        settings.base_model, dtype=getattr(torch, dtype), quantization_config=quantization
    )
    if settings.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing)
    if previous_adapter:
        model = PeftModel.from_pretrained(model, previous_adapter, is_trainable=True)
    return model, tokenizer


def training_dtype(settings: TrainerSettings) -> str:
    """``auto``: bfloat16 on a GPU that supports it, float32 elsewhere (CPU training)."""
    if settings.dtype != "auto":
        return settings.dtype
    import torch

    if not settings.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def check_trainer_settings(settings: TrainerSettings) -> None:
    """Refuse at start-up what this machine cannot do, rather than at the first round."""
    if settings.load_in_4bit:
        import importlib.util

        import torch

        if settings.use_cpu or not torch.cuda.is_available():
            raise SettingsError("trainer.load_in_4bit (QLoRA) needs a CUDA GPU; this trainer has none")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise SettingsError("trainer.load_in_4bit (QLoRA) needs bitsandbytes: pip install bitsandbytes")


def _common_args(
    settings: TrainerSettings, output_dir: str, report_to: list[str] | None = None, run_name: str | None = None
) -> dict[str, Any]:
    dtype = training_dtype(settings)
    return dict(
        output_dir=output_dir,
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        gradient_checkpointing=settings.gradient_checkpointing,
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        logging_steps=settings.logging_steps,
        save_strategy="steps" if settings.checkpoint_steps > 0 else "no",
        save_steps=max(settings.checkpoint_steps, 1),
        save_total_limit=1,
        report_to=report_to or [],
        run_name=run_name,
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=settings.use_cpu,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def sft_trainer(
    prepared: PreparedSft,
    tokenizer: Any,
    settings: TrainerSettings,
    output_dir: str,
    model: Any = None,
    peft_config: Any = None,
    tracking: RoundTracking | None = None,
) -> Any:
    """A TRL SFTTrainer on prepared rows (the base model loaded when none is given)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not prepared.rows:
        raise PermanentError(f"no sample can be trained on: {prepared.skipped}")
    if model is None:
        model, _ = _load_model(settings, None)
        peft_config = peft_config or _lora_config(settings)
    report_to, callbacks = trainer_callbacks(tracking) if tracking else ([], [])
    args = SFTConfig(
        **_common_args(settings, output_dir, report_to, tracking.run_name if tracking else None),
        max_length=settings.max_length,
        completion_only_loss=settings.assistant_only_loss,
        packing=False,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(prepared.rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )


class _Progress:
    """A transformers TrainerCallback that forwards each log entry (loss, step; GRPO's mean
    reward) to ``report``."""

    def __new__(cls, report: ProgressFn, total_steps: Callable[[], int]) -> Any:
        from transformers import TrainerCallback

        class Callback(TrainerCallback):  # type: ignore[misc]  # transformers is not type-checked here
            def on_log(
                self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
            ) -> None:
                if logs and "loss" in logs:
                    entry = {
                        "step": state.global_step,
                        "total_steps": state.max_steps or total_steps(),
                        "loss": float(logs["loss"]),
                        "epoch": float(state.epoch or 0.0),
                        "learning_rate": float(logs.get("learning_rate", 0.0)),
                    }
                    if "reward" in logs:
                        entry["reward"] = float(logs["reward"])
                    report(entry)

        return Callback()


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint a round can resume from. A trainer killed while saving leaves one
    without its trainer state (the Trainer writes it after the weights and the optimizer): such a
    checkpoint is removed and the one before it taken — resuming from it failed every retry and
    lost the round."""
    steps = {p: p.name.removeprefix("checkpoint-") for p in checkpoints.glob("checkpoint-*")}
    found = sorted((p for p, step in steps.items() if step.isdigit()), key=lambda p: int(steps[p]))
    for checkpoint in reversed(found):
        weights = any(checkpoint.glob("*.safetensors")) or any(checkpoint.glob("*.bin"))
        if (checkpoint / "trainer_state.json").is_file() and weights:
            return checkpoint
        log.warning("an incomplete checkpoint removed", checkpoint=str(checkpoint))
        shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def train_round(
    samples: list[Sample],
    settings: TrainerSettings,
    out_dir: str | os.PathLike[str],
    previous_adapter: str | None = None,
    report: ProgressFn | None = None,
    template_kwargs: dict[str, Any] | None = None,
    tracking: RoundTracking | None = None,
) -> TrainingOutcome:
    """Train on ``samples`` and save the adapter to ``out_dir`` (atomically). ``template_kwargs``
    are the policy endpoint's ``chat_template_kwargs``: the text trained on is the text served.
    ``tracking``: the experiment trackers the round reports to (:mod:`looptool.loop.tracking`)."""
    from datasets import Dataset

    out = Path(out_dir)
    staging = out.with_name(f"{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    # Checkpoints live beside the adapter under a name of their own, so that a trainer killed
    # mid-round resumes from the last one instead of starting the round over.
    checkpoints = out.with_name(f"{out.name}.checkpoints")
    resume = last_complete_checkpoint(checkpoints) if settings.checkpoint_steps > 0 else None
    model, tokenizer = _load_model(settings, previous_adapter)
    peft_config = None if previous_adapter else _lora_config(settings)
    skipped: dict[str, int] = {}
    if settings.method == "sft":
        prepared = prepare_sft(samples, tokenizer, settings.max_length, template_kwargs)
        skipped = prepared.skipped
        trainer = sft_trainer(prepared, tokenizer, settings, str(checkpoints), model, peft_config, tracking)
    else:
        from trl import GRPOConfig, GRPOTrainer

        dataset = Dataset.from_list(grpo_rows(samples, tokenizer, template_kwargs))
        report_to, callbacks = trainer_callbacks(tracking) if tracking else ([], [])
        args = GRPOConfig(
            **_common_args(settings, str(checkpoints), report_to, tracking.run_name if tracking else None),
            num_generations=settings.grpo_generations,
            max_completion_length=settings.grpo_max_completion_length,
            temperature=settings.grpo_temperature,
            beta=settings.grpo_beta,
            epsilon=settings.grpo_clip_low,
            epsilon_high=settings.grpo_clip_high,
        )
        trainer = GRPOTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            reward_funcs=[correctness_reward, format_reward],
            peft_config=peft_config,
            callbacks=callbacks,
        )
    losses: list[float] = []
    rewards: list[float] = []

    def on_progress(entry: dict[str, Any]) -> None:
        losses.append(entry["loss"])
        if "reward" in entry:
            rewards.append(entry["reward"])
        if report is not None:
            report(entry)

    trainer.add_callback(_Progress(on_progress, lambda: trainer.state.max_steps))
    start = time.perf_counter()
    if resume:
        log.info("resuming the round from its last checkpoint", checkpoint=str(resume))
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - start
    tokens = _trained_tokens(trainer, result)
    trainer.model.save_pretrained(str(staging / "adapter"))
    tokenizer.save_pretrained(str(staging / "adapter"))
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging / "adapter", out)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return TrainingOutcome(
        adapter_dir=str(out),
        steps=trainer.state.global_step,
        losses=losses,
        tokens=tokens,
        seconds=seconds,
        skipped=skipped,
        rewards=rewards,
    )


def _trained_tokens(trainer: Any, result: Any) -> int:
    # TRL logs the cumulative number of tokens trained on with each loss entry.
    counts = [entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry]
    return int(counts[-1]) if counts else 0
