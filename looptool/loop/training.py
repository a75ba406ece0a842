"""Training a round: TRL (SFT or GRPO) with PEFT LoRA adapters, on LoopTool samples.

Runs synchronously (the trainer service calls it in a worker thread). Data is rendered the way
the serving vLLM renders requests (:func:`looptool.models.wire_messages`: tool-call arguments
as JSON strings, tools as a JSON string column that TRL decodes), so that a model trained here
sees at inference exactly the text it was trained on — and Arrow never "unifies" differently
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from looptool.data.checker import sample_answer
from looptool.data.formats.openai import export_row
from looptool.data.samples import Sample
from looptool.llm.client import wire_messages
from looptool.loop.rewards import correctness_reward, format_reward
from looptool.loop.settings import TrainerSettings

ProgressFn = Callable[[dict[str, Any]], None]


class TrainingOutcome(msgspec.Struct):
    adapter_dir: str
    steps: int
    losses: list[float]
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def sft_rows(samples: list[Sample]) -> list[dict[str, Any]]:
    return [
        {"messages": wire_messages(s, with_label=True), "tools": json.dumps(export_row(s)["tools"], ensure_ascii=False)}
        for s in samples
    ]


def grpo_rows(samples: list[Sample], tokenizer: Any) -> list[dict[str, Any]]:
    """Prompts rendered with the policy's chat template (tools included) as plain text; the
    label travels in ``answer``/``category``/``tools`` columns for the reward functions."""
    rows = []
    for sample in samples:
        tools = export_row(sample)["tools"]
        prompt = tokenizer.apply_chat_template(
            wire_messages(sample), tools=tools or None, add_generation_prompt=True, tokenize=False
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
    model = AutoModelForCausalLM.from_pretrained(settings.base_model, dtype=torch.float32)
    if previous_adapter:
        model = PeftModel.from_pretrained(model, previous_adapter, is_trainable=True)
    return model, tokenizer


class _Progress:
    """A transformers TrainerCallback that forwards each log entry (loss, step) to ``report``."""

    def __new__(cls, report: ProgressFn, total_steps: Callable[[], int]) -> Any:
        from transformers import TrainerCallback

        class Callback(TrainerCallback):  # type: ignore[misc]  # transformers is not type-checked here
            def on_log(
                self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
            ) -> None:
                if logs and "loss" in logs:
                    report(
                        {
                            "step": state.global_step,
                            "total_steps": state.max_steps or total_steps(),
                            "loss": float(logs["loss"]),
                            "epoch": float(state.epoch or 0.0),
                            "learning_rate": float(logs.get("learning_rate", 0.0)),
                        }
                    )

        return Callback()


def train_round(
    samples: list[Sample],
    settings: TrainerSettings,
    out_dir: str | os.PathLike[str],
    previous_adapter: str | None = None,
    report: ProgressFn | None = None,
) -> TrainingOutcome:
    """Train on ``samples`` and save the adapter to ``out_dir`` (atomically)."""
    from datasets import Dataset

    out = Path(out_dir)
    staging = out.with_name(f"{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    model, tokenizer = _load_model(settings, previous_adapter)
    peft_config = None if previous_adapter else _lora_config(settings)
    common = dict(
        output_dir=str(staging / "trainer"),
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        logging_steps=settings.logging_steps,
        save_strategy="no",
        report_to=[],
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=settings.use_cpu,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    if settings.method == "sft":
        from trl import SFTConfig, SFTTrainer

        dataset = Dataset.from_list(sft_rows(samples))
        args = SFTConfig(
            **common, max_length=settings.max_length, assistant_only_loss=settings.assistant_only_loss, packing=False
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
        )
    else:
        from trl import GRPOConfig, GRPOTrainer

        dataset = Dataset.from_list(grpo_rows(samples, tokenizer))
        args = GRPOConfig(
            **common,
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
        )
    losses: list[float] = []

    def on_progress(entry: dict[str, Any]) -> None:
        losses.append(entry["loss"])
        if report is not None:
            report(entry)

    trainer.add_callback(_Progress(on_progress, lambda: trainer.state.max_steps))
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    tokens = _trained_tokens(trainer, result)
    trainer.model.save_pretrained(str(staging / "adapter"))
    tokenizer.save_pretrained(str(staging / "adapter"))
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging / "adapter", out)
    shutil.rmtree(staging, ignore_errors=True)
    return TrainingOutcome(
        adapter_dir=str(out), steps=trainer.state.global_step, losses=losses, tokens=tokens, seconds=seconds
    )


def _trained_tokens(trainer: Any, result: Any) -> int:
    # TRL logs the cumulative number of tokens trained on with each loss entry.
    counts = [entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry]
    return int(counts[-1]) if counts else 0
