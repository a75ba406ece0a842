"""Starting a run: upload its seed data, publish ``run.requested`` — and nothing else. The
rounds happen because the services react to each other's events."""

from __future__ import annotations

import msgspec

from .bus import Bus
from .formats import encode_samples, import_file, read_samples
from .ledger import RunLedger
from .runconfig import RunConfig, RunConfigError
from .schemas import RunRequested
from . import subjects


async def submit_run(bus: Bus, config: RunConfig) -> RunRequested:
    if config.seed_data is None:
        if not config.seed_path:
            raise RunConfigError(f"run {config.run}: give seed_path (a dataset file)")
        if config.seed_format == "samples":
            samples = read_samples(config.seed_path)
        else:
            report = import_file(config.seed_path, config.seed_format, config.seed_answers)
            if report.errors:
                raise RunConfigError(f"{config.seed_path}: {report.summary()}; first: {report.errors[0]} (fix or drop those rows, then run again)")
            samples = report.samples
        if not samples:
            raise RunConfigError(f"{config.seed_path}: no samples")
        config.seed_data = await bus.put_artifact(f"{config.run}/seed.jsonl", encode_samples(samples))
    request = RunRequested(run=config.run, config=msgspec.to_builtins(config))
    await bus.publish(request)
    return request


async def fold_run(bus: Bus, run: str) -> RunLedger:
    """The ledger of a run as its event log stands now."""
    ledger = RunLedger(run)
    async for _, event in bus.read(subjects.run_filter(run)):
        if not isinstance(event, bytes):
            ledger.apply(event)
    return ledger
