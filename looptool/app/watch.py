"""``looptool watch``: a live view of a run or a synthesis job, folded from its event stream
(late starts replay)."""

from __future__ import annotations

import sys

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from looptool.app.runs import run_events
from looptool.kernel.bus import Bus
from looptool.loop.events import DatasetReady, RunFinished
from looptool.loop.ledger import RoundLedger, RunLedger
from looptool.loop.runconfig import PplCut
from looptool.loop.synthesis import JobLedger


def _bar(done: int, total: int) -> Group | str:
    if total <= 0:
        return "—"
    return Group(ProgressBar(total=total, completed=done, width=18), Text(f"{done}/{total}", style="dim"))


def _cut(ledger: RunLedger) -> PplCut:
    return PplCut() if ledger.request is None else ledger.request.config.ppl_cut


def render(ledger: RunLedger) -> Group:
    table = Table(title=f"LoopTool run [bold]{ledger.run}[/]", expand=False)
    for column in ("round", "dataset", "train", "probe", "judge", "expand", "eval overall", "outcomes"):
        table.add_column(column)
    cut = _cut(ledger)
    for r in sorted(ledger.rounds):
        rl: RoundLedger = ledger.rounds[r]
        loss = (
            f"loss {rl.losses[-1][1]:.3f} @ {rl.losses[-1][0]}/{rl.total_steps}"
            if rl.losses
            else ("ready" if rl.model else "—")
        )
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
    footer = Text(
        f"{status} · errors {ledger.errors} · dead letters {ledger.dead_letters}"
        + (f" · refused {sum(ledger.refused.values())}" if ledger.refused else ""),
        style="bold green" if ledger.finished else "",
    )
    return Group(table, *problems(ledger), footer)


def problems(ledger: RunLedger) -> list[Text]:
    """Errored work by stage and reason, and rounds stalled now (with what they wait for)."""
    lines = []
    for r, rl in sorted(ledger.rounds.items()):
        for reason, n in sorted(rl.errored_by_reason().items()):
            lines.append(Text(f"round {r} errored {n}× — {reason}", style="yellow"))
        if rl.eval_failed is not None:
            lines.append(Text(f"round {r} evaluation failed — {rl.eval_failed}", style="yellow"))
        stall = rl.stalled()
        if stall is not None:
            waiting = ", ".join(f"{stage} {n}" for stage, n in stall.waiting.items())
            some = "; ".join(f"{stage}: {' '.join(ids[:5])}" for stage, ids in stall.samples.items() if ids)
            lines.append(
                Text(f"round {r} stalled {stall.idle_seconds:.0f}s — waiting for {waiting} ({some})", style="bold red")
            )
    return lines


def status_line(ledger: RunLedger) -> str:
    """One line of progress, for logs and terminals that cannot redraw."""
    if not ledger.rounds:
        return f"{ledger.run}: waiting for round 0"
    r = max(ledger.rounds)
    rl = ledger.rounds[r]
    loss = f" loss {rl.losses[-1][1]:.3f} ({rl.losses[-1][0]}/{rl.total_steps})" if rl.losses else ""
    overall = ledger.overall(r)
    waiting = ", ".join(f"{stage} {n}" for stage, n in rl.missing().items()) or "complete"
    errored = sum(rl.errored_by_reason().values())
    stall = rl.stalled()
    if errored:
        waiting += f"; errored {errored}"
    if stall is not None:
        waiting += f"; STALLED {stall.idle_seconds:.0f}s"
    return f"{ledger.run} r{r}: dataset {rl.size}{loss}, probed {len(rl.probes)}, judged {len(rl.verdicts)}, expanded {len(rl.expansions)}, eval {overall if overall is None else round(overall, 3)} — waiting: {waiting}"


async def watch(
    bus: Bus, run: str, console: Console | None = None, until_finished: bool = True, interval: float = 5.0
) -> RunLedger:
    """Follow a run until it finishes: a live table on a terminal, a status line every
    ``interval`` seconds (and at each round's end) elsewhere."""
    console = console or Console()
    ledger = RunLedger(run)
    events = run_events(bus, run, follow=True)
    if console.is_terminal:
        with Live(render(ledger), console=console, refresh_per_second=4) as live:
            async for event in events:
                ledger.apply(event)
                live.update(render(ledger))
                if until_finished and isinstance(event, RunFinished):
                    break
        return ledger
    console.width = max(console.width, 160)
    last = 0.0
    async for event in events:
        ledger.apply(event)
        now = anyio.current_time()
        if now - last >= interval or isinstance(event, (DatasetReady, RunFinished)):
            console.print(status_line(ledger), highlight=False)
            last = now
        if until_finished and isinstance(event, RunFinished):
            break
    console.print(render(ledger))
    return ledger


async def watch_synthesis(bus: Bus, job: str, interval: float = 5.0) -> JobLedger:
    """Follow a synthesis job until it settles: a status line every ``interval`` seconds and at
    the end, on stderr (stdout stays for what a command writes)."""
    ledger = JobLedger(job)
    last = 0.0
    async for event in run_events(bus, job, follow=True):
        ledger.apply(event)
        now = anyio.current_time()
        if now - last >= interval or ledger.finished is not None:
            print(ledger.status(), file=sys.stderr, flush=True)
            last = now
        if ledger.finished is not None:
            break
    return ledger
