"""``looptool export RUN``: a run's best round, packaged to serve.

The round is chosen by an evaluated metric (default: the held-out ``overall``; ``--round`` picks
one by hand). Its adapter comes from the Object Store, where the trainer put it, with the
tokenizer and chat template it was trained with; ``--merge`` also writes the base model with the
adapter merged in (safetensors), which any server loads as a plain model. Beside them: a model
card (``README.md``) and ``export.json`` — the base model, what each round trained on, each
round's scores, the benchmarks' headline numbers and the run's config.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from looptool.app.report import base_metrics
from looptool.kernel.errors import LoopToolError
from looptool.kernel.events import ArtifactRef
from looptool.loop.events import DatasetReady
from looptool.loop.ledger import RunLedger

HEADLINES = ("bfcl_overall", "bfcl_v3_overall", "acebench_summary")


class ExportError(LoopToolError, ValueError):
    pass


class Exported(msgspec.Struct):
    run: str
    round: int
    chosen_by: str
    base_model: str
    adapter: str
    merged: str | None
    scores: list[dict[str, float]]  # per round, from round 0 (the round's model after training)
    base_scores: dict[str, float] | None
    datasets: dict[int, dict[str, int]]  # per round: what it trained on, by source
    config: Any


def best_round(ledger: RunLedger, metric: str = "overall") -> int:
    """The round whose trained model scored highest on ``metric`` (the earlier one on a tie)."""
    scored = {r: ledger.policy_metrics(r).get(metric) for r in sorted(ledger.rounds) if ledger.round(r).model}
    evaluated = {r: value for r, value in scored.items() if value is not None}
    if not evaluated:
        known = sorted({m for r in scored for m in ledger.policy_metrics(r)})
        raise ExportError(
            f"run {ledger.run}: no round's model has {metric!r} evaluated"
            + (f" (evaluated: {', '.join(known)})" if known else "")
            + "; give --round"
        )
    return max(evaluated, key=lambda r: (evaluated[r], -r))


async def export_run(
    ledger: RunLedger,
    get_artifact: Callable[[ArtifactRef], Awaitable[bytes]],
    out: str | Path,
    *,
    metric: str = "overall",
    round: int | None = None,
    merge: bool = False,
    base_model: str | None = None,
) -> Exported:
    out = Path(out)
    chosen = round if round is not None else best_round(ledger, metric)
    ready = ledger.rounds[chosen].model if chosen in ledger.rounds else None
    if ready is None or ready.adapter is None:
        raise ExportError(f"run {ledger.run}: round {chosen} has no trained adapter in the artifact store")
    base = base_model or ready.base_model
    if merge and not base:
        raise ExportError(f"run {ledger.run}: the base model is not recorded; give --base-model")
    adapter = out / "adapter"
    if adapter.exists():
        shutil.rmtree(adapter)
    _untar(await get_artifact(ready.adapter), adapter)
    merged = None
    if merge:
        merged = str(merge_adapter(base, adapter, out / "merged"))
    exported = Exported(
        run=ledger.run,
        round=chosen,
        chosen_by="--round" if round is not None else f"highest {metric}",
        base_model=base,
        adapter=str(adapter),
        merged=merged,
        scores=[ledger.policy_metrics(r) for r in sorted(ledger.rounds) if ledger.round(r).model],
        base_scores=base_metrics(ledger),
        datasets={r: dict(d.composition) for r, d in _datasets(ledger)},
        config=msgspec.to_builtins(ledger.request.config) if ledger.request else None,
    )
    (out / "export.json").write_bytes(msgspec.json.format(msgspec.json.encode(exported)) + b"\n")
    (out / "README.md").write_text(model_card(exported))
    return exported


def _datasets(ledger: RunLedger) -> list[tuple[int, DatasetReady]]:
    return [(r, d) for r in sorted(ledger.rounds) if (d := ledger.round(r).dataset) is not None]


def merge_adapter(base_model: str, adapter: Path, out: Path) -> Path:
    """The base model with the LoRA adapter merged in, saved as safetensors with the tokenizer
    and chat template the adapter was trained with."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype="auto")
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    if out.exists():
        shutil.rmtree(out)
    merged.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(str(out))
    return out


def model_card(exported: Exported) -> str:
    metrics = sorted({m for scores in exported.scores for m in scores})
    rows = [("base", exported.base_scores)] if exported.base_scores else []
    rows += [(f"round {r}", s) for r, s in enumerate(exported.scores)]
    table = ["| model | " + " | ".join(metrics) + " |", "| --- |" + " --- |" * len(metrics)]
    table += [f"| {name} | " + " | ".join(_score(s.get(m)) for m in metrics) + " |" for name, s in rows if s]
    chosen = exported.scores[exported.round] if exported.round < len(exported.scores) else {}
    headlines = ", ".join(f"{h} {chosen[h]:.3f}" for h in HEADLINES if h in chosen) or "none evaluated"
    data = "\n".join(
        f"- round {r}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if v)
        for r, c in exported.datasets.items()
    )
    merged = (
        f"\n- `merged/`: the base model with the adapter merged in: `vllm serve {exported.merged}`"
        if exported.merged
        else ""
    )
    return f"""---
base_model: {exported.base_model}
library_name: peft
tags: [looptool, tool-calling, lora]
---

# {exported.run}, round {exported.round}

A LoRA adapter on `{exported.base_model}` trained by LoopTool's loop (run `{exported.run}`), round
{exported.round}, chosen by {exported.chosen_by}.

- `adapter/`: the PEFT adapter, with the tokenizer and chat template it was trained with:
  `vllm serve {exported.base_model} --enable-lora --lora-modules {exported.run}={exported.adapter}`{merged}
- `export.json`: everything below, machine-readable.

## Scores (held-out, after each round's training)

{chr(10).join(table)}

Benchmarks' headline numbers for this round: {headlines}.

## What each round trained on

{data}

## The run's config

```json
{msgspec.json.format(msgspec.json.encode(exported.config)).decode()}
```
"""


def _score(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _untar(data: bytes, into: Path) -> None:
    """The trainer's archive (``adapter/...``) unpacked into ``into``; only regular files and
    folders inside it are accepted (tarfile's ``data`` filter)."""
    into.parent.mkdir(parents=True, exist_ok=True)
    staging = into.with_name(f"{into.name}.tmp")
    if staging.exists():
        shutil.rmtree(staging)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(staging, filter="data")
    (staging / "adapter").rename(into)
    shutil.rmtree(staging)
