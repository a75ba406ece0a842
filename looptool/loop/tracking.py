"""Experiment tracking beside the event log: where a team looks at runs (TensorBoard, MLflow,
Weights & Biases).

The trainer hands ``tracking.report_to`` to TRL's own integrations, one tracker run per round
named ``<run>-r<round>``; TensorBoard's logs go to ``<dir>/<run>/r<round>``. The evaluator
writes each round's scores to TensorBoard's log of the same run, ``<dir>/<run>/eval`` — the
round's model as ``eval/<metric>`` at step = round, the base model as ``base/<metric>`` — so
that one ``tensorboard --logdir <dir>`` shows a run's losses and scores together.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec

from looptool.kernel.settings import Section, SettingsError

TENSORBOARD = "tensorboard"


class TrackingSettings(Section):
    # TRL's integration names (the trainer): "tensorboard", "mlflow", "wandb", ...; the
    # evaluator's scores go to "tensorboard". Empty: the event log only.
    report_to: list[str] = msgspec.field(default_factory=list)
    dir: str = ""  # TensorBoard's logs; "": <artifact_dir>/tensorboard


class RoundTracking(msgspec.Struct, frozen=True):
    """What one round's training reports to (given to :func:`looptool.loop.training.train_round`)."""

    report_to: list[str]
    run_name: str
    tensorboard_dir: str


def check_tracking(tracking: TrackingSettings) -> None:
    """At a service's start: TensorBoard asked for and not installed is a clear error, not a
    handler failing on every round."""
    if TENSORBOARD in tracking.report_to:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise SettingsError(
                "tracking.report_to has \"tensorboard\", which is not installed: pip install 'looptool[tracking]'"
            ) from None


def logs_dir(tracking: TrackingSettings, artifact_dir: str, run: str) -> Path:
    return Path(tracking.dir or Path(artifact_dir) / "tensorboard") / run


def for_round(tracking: TrackingSettings, artifact_dir: str, run: str, round: int) -> RoundTracking | None:
    if not tracking.report_to:
        return None
    return RoundTracking(
        list(tracking.report_to), f"{run}-r{round}", str(logs_dir(tracking, artifact_dir, run) / f"r{round}")
    )


def trainer_callbacks(tracking: RoundTracking) -> tuple[list[str], list[Any]]:
    """TRL's ``report_to`` and the callbacks to add: TensorBoard gets a writer on the round's own
    folder (TRL's default folder lives in the checkpoints, which are removed after the round)."""
    if TENSORBOARD not in tracking.report_to:
        return tracking.report_to, []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    others = [name for name in tracking.report_to if name != TENSORBOARD]
    return others, [TensorBoardCallback(SummaryWriter(log_dir=tracking.tensorboard_dir))]


def log_scores(directory: Path, round: int, metrics: dict[str, float], *, base: bool = False) -> None:
    """A round's scores as TensorBoard scalars (tensorboard's own event writer: no torch)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    prefix = "base" if base else "eval"
    writer = EventFileWriter(str(directory / "eval"))
    try:
        values = [Summary.Value(tag=f"{prefix}/{name}", simple_value=value) for name, value in sorted(metrics.items())]
        writer.add_event(Event(wall_time=time.time(), step=round, summary=Summary(value=values)))
        writer.flush()
    finally:
        writer.close()
