"""How far one round of SFT can move the toy policy, by what the round trains on.

    .venv/bin/python bench/sft_headroom.py [--sizes 160 600] [--out bench/results/sft_headroom.json]

The loop can only beat static training if the trainer turns better data into a better model.
This bench asks that directly, without the bus: the demo's trainer settings
(:func:`looptool.app.demo.demo_env`, LoRA through :func:`looptool.loop.training.train_round`)
on ``n`` samples of the demo's world, each arm starting from the toy policy, scored greedily by
the evaluator's checker on the held-out split (``bench/toy_policy.py``'s scoring: HF
generation, no vLLM, so arms differ by what they trained on only). Arms:

- ``seed``: the first ``n`` seed samples in the curator's order, label noise included: the
  static arm's data;
- ``seed_clean``: the same samples with their clean labels: what a perfect judge gives;
- ``failed_clean``: ``n`` seed samples the base model fails, with clean labels: what greedy
  probing plus a perfect judge gives, before expansion;
- ``rehearsal``: ``n`` of the policy's own clean pretraining samples: a control that the
  trainer's text is the text it was pretrained on (its loss starts where pretraining ended).

Writes one JSON file with the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
from toy_policy import accuracy, correct

from looptool.app.demo import cache_dir, demo_env, demo_world
from looptool.data.worlds.synthetic import label_is_noisy, with_clean_label
from looptool.loop.curation import shuffled_pool
from looptool.loop.settings import load_settings
from looptool.loop.toy_policy import Recipe, build_toy_policy, pretraining_split
from looptool.loop.training import train_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 600])
    parser.add_argument("--pool", type=int, default=1200)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--pretraining-samples", type=int, default=Recipe().samples, help="the toy's recipe")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    started = time.perf_counter()
    recipe = msgspec.structs.replace(Recipe(), samples=args.pretraining_samples)
    model_dir = build_toy_policy(cache_dir(load_settings().cache_dir), recipe)
    pretrained = pretraining_split(recipe)
    world = demo_world(args.pool, args.test, args.noise, args.seed, pretrained)
    env = demo_env(model_dir, [], Path(tempfile.gettempdir()))
    env["LOOPTOOL_TRAINER__LEARNING_RATE"] = str(args.learning_rate)
    env["LOOPTOOL_TRAINER__EPOCHS"] = str(args.epochs)
    trainer = load_settings(environ=env).trainer
    pool = shuffled_pool(world.train, args.seed)  # the order the loop's curator draws in
    base_on_pool = dict(zip((s.id for s in pool), correct(model_dir, pool), strict=True))
    base = accuracy(model_dir, world.test, recipe.unseen_domains)
    print(json.dumps({"arm": "base", "held_out": base}), flush=True)
    failed = [with_clean_label(s) for s in pool if not base_on_pool[s.id]]
    rehearsal = [s for s in pretrained if "noise" not in s.meta]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for n in args.sizes:
            arms = {
                "seed": pool[:n],
                "seed_clean": [with_clean_label(s) for s in pool[:n]],
                "failed_clean": failed[:n],
                "rehearsal": rehearsal[:n],
            }
            for arm, samples in arms.items():
                out = Path(scratch) / f"{arm}-{n}"
                outcome = train_round(samples, trainer, out)
                held_out = accuracy(model_dir, world.test, recipe.unseen_domains, adapter=out)
                row = {
                    "arm": arm,
                    "samples": len(samples),
                    "noisy_labels": sum(label_is_noisy(s) for s in samples),
                    "steps": outcome.steps,
                    "first_loss": round(outcome.losses[0], 4) if outcome.losses else None,
                    "last_loss": round(outcome.losses[-1], 4) if outcome.losses else None,
                    "train_seconds": round(outcome.seconds, 1),
                    "held_out": held_out,
                    "overall_minus_base": round(held_out["overall"] - base["overall"], 3),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    if args.out:
        report = {
            "command": "python bench/sft_headroom.py " + " ".join(sys.argv[1:]),
            "settings": vars(args) | {"base_on_pool": round(sum(base_on_pool.values()) / len(pool), 3)},
            "base": base,
            "arms": rows,
            "wall_seconds": round(time.perf_counter() - started),
        }
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
