"""Starting a run: upload its seed data, publish ``run.requested`` — and nothing else. The
rounds happen because the services react to each other's events."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

from looptool.data.formats import encode_samples, import_file
from looptool.kernel import names
from looptool.kernel.bus import Bus
from looptool.kernel.events import Event
from looptool.loop import keys
from looptool.loop.events import RunRequested
from looptool.loop.ledger import RunLedger
from looptool.loop.runconfig import RunConfig, RunConfigError


async def submit_run(bus: Bus, config: RunConfig, *, resume: bool = False) -> RunRequested:
    """Upload the seed data and request the run. A run name already in the log is refused
    (reusing it would mix two runs' events) unless ``resume``: then the stored request stands
    and the services go on from where the log is."""
    async for previous in bus.events(names.for_type(RunRequested, config.run)):
        if resume and isinstance(previous, RunRequested):
            return previous
        raise RunConfigError(f"run {config.run!r} already exists in the event log: choose another name, or resume it")
    if resume:
        raise RunConfigError(f"run {config.run!r} does not exist: nothing to resume")
    if config.seed_data is None:
        if not config.seed_path:
            raise RunConfigError(f"run {config.run}: give seed_path (a dataset file)")
        report = import_file(config.seed_path, config.seed_format, config.seed_answers)
        if report.errors:
            raise RunConfigError(
                f"{config.seed_path}: {report.summary()}; first: {report.errors[0]} (fix or drop those rows, then run again)"
            )
        samples = report.samples
        if not samples:
            raise RunConfigError(f"{config.seed_path}: no samples")
        duplicated = sorted(sid for sid, n in Counter(s.id for s in samples).items() if n > 1)
        if duplicated:
            raise RunConfigError(
                f"{config.seed_path}: {len(duplicated)} sample id(s) occur more than once: {', '.join(duplicated[:10])}"
            )
        config.seed_data = await bus.put_artifact(keys.seed_artifact(config.run), encode_samples(samples))
    request = RunRequested(run=config.run, config=config)
    await bus.publish(request)
    return request


async def run_events(bus: Bus, run: str, *, follow: bool = False) -> AsyncIterator[Event]:
    """A run's events that the services would believe (:func:`names.misfiled`), in log order:
    what the operator's views fold, so that they show what the services did."""
    async for msg, item in bus.read(names.run_filter(run), follow=follow):
        if isinstance(item, Event) and names.misfiled(msg.subject, item) is None:
            yield item


async def fold_run(bus: Bus, run: str) -> RunLedger:
    """The ledger of a run as its event log stands now."""
    ledger = RunLedger(run)
    async for event in run_events(bus, run):
        ledger.apply(event)
    return ledger
