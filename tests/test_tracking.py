"""Experiment tracking: a round's training losses (TRL's own TensorBoard integration) and each
round's scores (the evaluator) in TensorBoard's log of the run, read back as TensorBoard reads it."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from test_services_in_memory import RUN, settings

from looptool.data.worlds.synthetic import build
from looptool.kernel.testing import StubBus, StubRunner
from looptool.llm.client import ModelClients
from looptool.llm.testing import ScriptedModels, last_user_text
from looptool.loop import tracking
from looptool.loop.evaluation import load_eval_sets
from looptool.loop.events import ModelReady
from looptool.loop.settings import TrainerSettings
from looptool.loop.training import train_round
from looptool.services import evaluator


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(s.step, s.value) for s in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_a_rounds_training_losses_reach_tensorboard(tiny_model: Path, tmp_path: Path) -> None:
    trainer = TrainerSettings(
        base_model=str(tiny_model), use_cpu=True, max_steps=3, batch_size=2, gradient_accumulation=1, logging_steps=1
    )
    round_tracking = tracking.RoundTracking(["tensorboard"], "run-r0", str(tmp_path / "tb" / "run" / "r0"))
    outcome = train_round(build(6, 0, seed=2).train, trainer, tmp_path / "adapter", tracking=round_tracking)
    logged = scalars(tmp_path / "tb" / "run" / "r0")
    assert [value for _, value in logged["train/loss"]] == pytest.approx(outcome.losses)
    assert [step for step, _ in logged["train/loss"]] == [1, 2, 3]


def test_each_rounds_scores_reach_tensorboard_beside_the_losses(tmp_path: Path) -> None:
    sets = ["bfcl:simple_python:4"]
    truth = {item.messages[-1].content: item.label for item in load_eval_sets(sets)}  # type: ignore[union-attr]
    models = ScriptedModels(
        lambda request: "no call" if request["model"] == "policy" else truth[last_user_text(request)]
    )

    async def main() -> None:
        bus = StubBus()
        s = settings(tmp_path, evaluator__sets=sets, tracking__report_to=["tensorboard"])
        s.model.model = "policy"
        runner = StubRunner(bus, s, evaluator.service, resources={ModelClients: models})
        for r in (0, 1):
            await bus.publish(ModelReady(run=RUN, round=r, model=f"{RUN}-r{r}", base_model="base"))
        await runner.run_until_idle()

    anyio.run(main)
    logged = scalars(tmp_path / "artifacts" / "tensorboard" / RUN / "eval")
    assert logged["eval/overall"] == [(0, 1.0), (1, 1.0)]
    assert logged["base/overall"] == [(0, 0.0)]
    assert "eval/simple_python" in logged


def test_tensorboard_asked_for_without_the_package_stops_the_service_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the compose smoke test: the service image had no tensorboard, and the evaluator
    failed a handler per round instead of saying so once."""
    import builtins

    from looptool.kernel.settings import SettingsError
    from looptool.loop.settings import Settings
    from looptool.services import trainer

    real_import = builtins.__import__

    def without_tensorboard(name: str, *args: object, **kwargs: object) -> object:
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    settings = Settings()
    settings.tracking.report_to = ["tensorboard"]
    monkeypatch.setattr(builtins, "__import__", without_tensorboard)
    for service in (evaluator.service, trainer.service):
        assert service.check is not None
        with pytest.raises(SettingsError, match="pip install 'looptool\\[tracking\\]'"):
            service.check(settings)
    settings.tracking.report_to = []
    evaluator.service.check(settings)  # type: ignore[misc]
