"""``looptool watch``: a live view of a run, folded from its event stream (late starts replay)."""

from __future__ import annotations

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from . import subjects
from .bus import Bus
from .ledger import PplCut, RoundLedger, RunLedger
from .runconfig import RunConfig
from .schemas import Event, RunFinished

import msgspec


def _bar(done: int, total: int) -> Group | str:
    if total <= 0:
        return "—"
    return Group(ProgressBar(total=total, completed=done, width=18), Text(f"{done}/{total}", style="dim"))


def _cut(ledger: RunLedger) -> PplCut:
    if ledger.request is None:
        return PplCut()
    try:
        return msgspec.convert(ledger.request.config, RunConfig).ppl_cut
    except (msgspec.ValidationError, ValueError):
        return PplCut()


def render(ledger: RunLedger) -> Group:
    table = Table(title=f"LoopTool run [bold]{ledger.run}[/]", expand=False)
    for column in ("round", "dataset", "train", "probe", "judge", "expand", "eval overall", "outcomes"):
        table.add_column(column)
    cut = _cut(ledger)
    for r in sorted(ledger.rounds):
        rl: RoundLedger = ledger.rounds[r]
        loss = f"loss {rl.losses[-1][1]:.3f} @ {rl.losses[-1][0]}/{rl.total_steps}" if rl.losses else ("ready" if rl.model else "—")
        failed = len(rl.failed())
        seeds = len(rl.seeds())
        overall = ledger.overall(r)
        evals = f"{overall:.3f}" if overall is not None else "—"
        base = [e for name, e in rl.evals.items() if rl.model is None or name != rl.model.model]
        if base:
            evals += f" (base {base[0].metrics.get('overall', 0):.3f})"
        outcomes = " ".join(f"{k} {v}" for k, v in rl.composition(cut).items() if v) if rl.probes else ""
        table.add_row(
            str(r),
            str(rl.size) if rl.dataset else "…",
            loss,
            _bar(len(rl.probes), rl.size),
            _bar(failed - (rl.missing().get("judge", 0)), failed),
            _bar(seeds - rl.missing().get("expand", 0), seeds),
            evals,
            outcomes,
        )
    status = f"finished: {ledger.finished.reason}" if ledger.finished else "running"
    footer = Text(f"{status} · errors {ledger.errors} · dead letters {ledger.dead_letters}", style="bold green" if ledger.finished else "")
    return Group(table, footer)


async def watch(bus: Bus, run: str, console: Console | None = None, until_finished: bool = True) -> RunLedger:
    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)  # logs and CI: no terminal, room for the table
    ledger = RunLedger(run)
    with Live(render(ledger), console=console, refresh_per_second=4, transient=False) as live:
        async for _, event in bus.read(subjects.run_filter(run), follow=True):
            if isinstance(event, Event):
                ledger.apply(event)
                live.update(render(ledger))
                if until_finished and isinstance(event, RunFinished):
                    break
    return ledger
