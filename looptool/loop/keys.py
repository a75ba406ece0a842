"""The method's names: the state keys of its once-only actions, its artifacts, the names its
adapters are served under and their local paths. The kernel's own names (subjects, buckets,
consumers) are :mod:`looptool.kernel.names`."""

from __future__ import annotations

from pathlib import Path

from looptool.kernel.names import check_token, safe_token

# --------------------------------------------------------------------------- state keys


def run_started_key(run: str) -> str:
    return f"started.{check_token('run', run)}"


def round_closed_key(run: str, round: int) -> str:
    return f"closed.{check_token('run', run)}.r{round}"


def round_announced_key(run: str, round: int) -> str:
    """Set once round r's model is trained, served and announced."""
    return f"announced.{check_token('run', run)}.r{round}"


def evaluated_key(run: str, round: int, model: str) -> str:
    return f"evaluated.{check_token('run', run)}.r{round}.{safe_token(model)}"


def tracked_key(run: str, round: int, model: str) -> str:
    """Claimed by the evaluator replica that writes a round's scores to the experiment tracker."""
    return f"tracked.{check_token('run', run)}.r{round}.{safe_token(model)}"


def expansion_key(run: str, round: int, content_key: str) -> str:
    return f"expansions.{check_token('run', run)}.r{round}.{check_token('content key', content_key)}"


def synthesis_settled_key(job: str) -> str:
    return f"synthesized.{check_token('job', job)}"


# --------------------------------------------------------------------------- artifacts


def seed_artifact(run: str) -> str:
    return f"{check_token('run', run)}/seed.jsonl"


def synthesis_artifact(job: str, part: str) -> str:
    """A synthesis job's ``tools``, ``operations``, ``pool`` or ``rejects`` (JSONL)."""
    return f"{check_token('job', job)}/synthesis/{check_token('part', part)}.jsonl"


def dataset_artifact(run: str, round: int) -> str:
    return f"{check_token('run', run)}/r{round}/dataset.jsonl"


def adapter_artifact(run: str, round: int) -> str:
    return f"{check_token('run', run)}/r{round}/adapter.tar"


def eval_artifact(run: str, round: int, model: str, shard: int | None = None) -> str:
    part = "" if shard is None else f"-s{shard}"
    return f"{check_token('run', run)}/r{round}/eval-{safe_token(model)}{part}.jsonl"


def adapter_name(run: str, round: int) -> str:
    """The name round r's adapter is served under."""
    return check_token("adapter", f"{run}-r{round}")


# --------------------------------------------------------------------------- local paths


def round_dir(artifact_dir: str, run: str, round: int) -> Path:
    return Path(artifact_dir).resolve() / check_token("run", run) / f"r{round}"


def adapter_dir(artifact_dir: str, run: str, round: int) -> Path:
    return round_dir(artifact_dir, run, round) / "adapter"


def training_file(artifact_dir: str, run: str, round: int) -> Path:
    """The round's dataset as TRL-ready JSONL, for inspection or training outside LoopTool."""
    return round_dir(artifact_dir, run, round) / "train.trl.jsonl"
