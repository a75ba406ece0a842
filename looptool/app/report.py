"""``looptool report``: a self-contained HTML report of a run (and a PNG of its main chart)."""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402

from looptool.app.watch import _cut
from looptool.data.calls import format_python_calls
from looptool.data.samples import ToolCall
from looptool.data.scoring import SUMMARY_PREFIXES
from looptool.loop import capabilities
from looptool.loop.ledger import OUTCOMES, RunLedger

CATEGORY_ORDER = ("overall", "simple", "multiple", "parallel", "parallel_multiple", "irrelevance")
# Each benchmark's own headline (its weights), charted beside the item-weighted overall.
BENCHMARK_HEADLINES = ("bfcl_overall", "bfcl_v3_overall", "acebench_summary")


def metric_columns(ledger: RunLedger) -> list[str]:
    """``overall``, the benchmarks' summaries, then every category any evaluation scored."""
    seen = {name for rl in ledger.rounds.values() for result in rl.evals.values() for name in result.metrics}
    summaries = sorted(n for n in seen if n.startswith(SUMMARY_PREFIXES))
    known = [c for c in CATEGORY_ORDER if c in seen and c != "overall"]
    rest = sorted(seen - {"overall", *summaries, *known})
    return ["overall", *summaries, *known, *rest]


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def base_metrics(ledger: RunLedger) -> dict[str, float] | None:
    """The base model's metrics (scored beside round 0's model), when it was evaluated."""
    first = ledger.rounds.get(0)
    if first is None or first.model is None:
        return None
    return next((e.metrics for name, e in sorted(first.evals.items()) if name != first.model.model), None)


def summary(ledger: RunLedger) -> dict[str, Any]:
    """What ``report.json`` holds: per round the policy's held-out metrics (``overall`` and per
    category) and the count of samples per outcome; the base model's overall beside them."""
    cut = _cut(ledger)
    base = base_metrics(ledger)
    return {
        "run": ledger.run,
        "status": ledger.finished.reason if ledger.finished else "running",
        "base_overall": base.get("overall") if base else None,
        "base": base,
        "rounds": [
            {
                "round": r,
                "overall": ledger.overall(r),
                "metrics": ledger.policy_metrics(r),
                "outcomes": rl.composition(cut) if rl.probes else {},
                "samples": rl.size,
            }
            for r, rl in sorted(ledger.rounds.items())
        ],
        "errors": ledger.errors,
        "dead_letters": ledger.dead_letters,
        "refused": dict(ledger.refused),  # events the ledger did not believe, by reason
    }


def eval_chart(ledger: RunLedger) -> bytes:
    figure, axis = plt.subplots(figsize=(7, 4))
    rounds = sorted(r for r in ledger.rounds if ledger.overall(r) is not None)
    charted = (*CATEGORY_ORDER, *BENCHMARK_HEADLINES)
    categories = [c for c in charted if any(c in ledger.policy_metrics(r) for r in rounds)]
    for category in categories:
        values = [ledger.policy_metrics(r).get(category) for r in rounds]
        bold = category == "overall" or category in BENCHMARK_HEADLINES
        axis.plot(rounds, values, marker="o", linewidth=2.5 if bold else 1.2, label=category)
    base = base_metrics(ledger)
    if base is not None:
        axis.axhline(base.get("overall", 0), color="grey", linestyle="--", label="base model overall")
    axis.set_xlabel("round")
    axis.set_ylabel("accuracy (AST)")
    axis.set_ylim(0, 1)
    axis.set_xticks(rounds or [0])
    axis.set_title(f"Held-out accuracy per round — run {ledger.run}")
    axis.legend(fontsize=8, loc="best")
    axis.grid(alpha=0.3)
    return _png(figure)


def _stacked(title: str, rows: Mapping[int, Mapping[Any, int]], keys: list[str]) -> bytes:
    figure, axis = plt.subplots(figsize=(7, 3.6))
    rounds = sorted(rows)
    bottom = [0] * len(rounds)
    for key in keys:
        values = [rows[r].get(key, 0) for r in rounds]
        axis.bar([str(r) for r in rounds], values, bottom=bottom, label=key)
        bottom = [b + v for b, v in zip(bottom, values, strict=False)]
    axis.set_xlabel("round")
    axis.set_title(title)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    return _png(figure)


def _loss_chart(ledger: RunLedger) -> bytes:
    figure, axis = plt.subplots(figsize=(7, 3.4))
    for r in sorted(ledger.rounds):
        losses = ledger.rounds[r].losses
        if losses:
            axis.plot([s for s, _ in losses], [v for _, v in losses], label=f"round {r}")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return _png(figure)


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _table(headers: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _calls(calls: list[ToolCall]) -> str:
    return format_python_calls(calls) if calls else "no call"


def capability_dashboard(ledger: RunLedger) -> list[str]:
    """Per round: the policy's failures by kind and by category, what the expansions targeted,
    and the labels the judge corrected."""
    rounds = {r: rl for r, rl in sorted(ledger.rounds.items()) if rl.probes}
    kinds = {r: capabilities.failures_by_kind(rl) for r, rl in rounds.items()}
    targets = {r: capabilities.expansion_targets(rl) for r, rl in rounds.items()}
    categories = sorted({c for rl in rounds.values() for c in capabilities.failures_by_category(rl)})
    by_category = {r: capabilities.failures_by_category(rl) for r, rl in rounds.items()}
    fixes = [(r, fix) for r, rl in rounds.items() for fix in capabilities.corrections(rl)]
    used = [k for k in capabilities.FAILURE_KINDS if any(k in row for row in kinds.values())]
    return [
        "<h2>Capabilities</h2>",
        "<p>The policy's failures in each round's probe, by kind of mistake and by category, and the samples the expander wrote for each kind of failure.</p>",
        _table(["round", *used], [[r, *(row.get(k, 0) for k in used)] for r, row in kinds.items()]),
        _table(
            ["round", *(f"{c} failed/probed" for c in categories)],
            [[r, *("/".join(map(str, row.get(c, (0, 0)))) for c in categories)] for r, row in by_category.items()],
        ),
        _table(
            ["round", *(f"expansions for {k}" for k in used)],
            [[r, *(t.get(k, 0) for k in used)] for r, t in targets.items()],
        ),
        f"<p>Labels corrected by the judge: {len(fixes)}.</p>",
        _table(
            ["round", "sample", "label before", "label after"],
            [[r, fix.sample_id, _calls(fix.before), _calls(fix.after)] for r, fix in fixes[:50]]
            or [["—", "none", "", ""]],
        ),
    ]


def _decontamination(ledger: RunLedger) -> str:
    first = ledger.rounds.get(0)
    checked = list(first.evals.values()) if first else []
    if not checked:
        return "<p>Decontamination: not checked yet (the evaluator checks round 0's training data).</p>"
    worst = max(checked, key=lambda e: e.contaminated)
    if not worst.contaminated:
        return "<p>Decontamination: no training sample of round 0 overlaps the eval sets.</p>"
    ids = ", ".join(html.escape(i) for i in worst.contaminated_ids[:10])
    return (
        f"<p><b>Decontamination: {worst.contaminated} training samples of round 0 overlap the eval sets</b> "
        f"(a shared tool and query n-grams, as <code>looptool lint</code> counts them); first: {ids}.</p>"
    )


def write_report(ledger: RunLedger, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html``, ``report.png`` (the accuracy chart) and ``report.json`` (the numbers,
    :func:`summary`) into ``out_dir``; returns the first two."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(summary(ledger), indent=1) + "\n", encoding="utf-8")
    cut = _cut(ledger)
    main_chart = eval_chart(ledger)
    (out / "report.png").write_bytes(main_chart)

    composition = {
        r: rl.composition(cut) | {"fresh": rl.dataset.composition.get("fresh", 0) if rl.dataset else 0}
        for r, rl in ledger.rounds.items()
        if rl.probes
    }
    verdicts = {r: dict(Counter(v.verdict for v in rl.verdicts.values())) for r, rl in ledger.rounds.items()}
    tiers = {r: dict(Counter(v.tier for v in rl.verdicts.values())) for r, rl in ledger.rounds.items()}
    votes = 3
    saved = {r: t.get("rules", 0) + t.get("match", 0) for r, t in tiers.items()}
    llm_calls = {r: sum(v.llm_calls for v in rl.verdicts.values()) for r, rl in ledger.rounds.items()}

    columns = metric_columns(ledger)
    eval_rows = []
    for r in sorted(ledger.rounds):
        for name, result in sorted(ledger.rounds[r].evals.items()):
            eval_rows.append(
                [
                    r,
                    name,
                    result.n_items,
                    *(f"{result.metrics[c]:.3f}" if c in result.metrics else "—" for c in columns),
                ]
            )
    sections = [
        f"<h1>LoopTool run <code>{html.escape(ledger.run)}</code></h1>",
        f"<p>Status: <b>{html.escape(ledger.finished.reason if ledger.finished else 'running')}</b> · service errors {ledger.errors} · dead letters {ledger.dead_letters} · events refused {sum(ledger.refused.values())}</p>",
        "<h2>Held-out accuracy</h2>",
        _img(main_chart, "accuracy per round"),
        "<p>Accuracy per category; <code>overall</code> weighs every item alike. <code>bfcl_overall</code> is BFCL's overall with BFCL's weights (computed by bfcl-eval's leaderboard code: categories not evaluated count 0), <code>bfcl_v3_overall</code> the same with BFCL v3's formula (the number the LoopTool paper reports), <code>acebench_summary</code> ACEBench's weighted summary likewise.</p>",
        _table(["round", "model", "items", *columns], eval_rows),
        _decontamination(ledger),
        "<h2>Data composition per round</h2>",
        "<p>What became of each round's samples (kept: mastered above the perplexity cut, or both right; dropped: mastered below it; hard: the policy was wrong; corrected: the label was; discarded: both wrong), the expansions grown from the verified failures, and fresh seed data added to the next round.</p>",
        _img(_stacked("samples per outcome", composition, [*OUTCOMES, "expanded", "fresh"]), "composition"),
        _table(
            ["round", *OUTCOMES, "expanded", "fresh"],
            [[r, *(c.get(k, 0) for k in (*OUTCOMES, "expanded", "fresh"))] for r, c in sorted(composition.items())],
        ),
        "<h2>Errored work</h2>",
        "<p>Samples whose work failed for good (dead-lettered), by stage and reason; each still counts once, as <i>errored</i>.</p>",
        _table(
            ["round", "stage: reason", "samples"],
            [[r, reason, n] for r, rl in sorted(ledger.rounds.items()) for reason, n in rl.errored_by_reason().items()]
            or [["—", "none", 0]],
        ),
        *capability_dashboard(ledger),
        "<h2>Judge decisions</h2>",
        _img(
            _stacked(
                "verdicts per round",
                verdicts,
                ["prediction_wrong", "label_wrong", "both_right", "both_wrong", "unclear"],
            ),
            "verdicts",
        ),
        "<h2>Rules tier vs LLM judge</h2>",
        f"<p>Verdicts settled without an LLM (exact match or rules) save about {votes} judge calls each at the default vote count.</p>",
        _table(
            ["round", "match", "rules", "llm", "LLM calls made", f"LLM calls saved (≈{votes}/verdict)"],
            [
                [r, t.get("match", 0), t.get("rules", 0), t.get("llm", 0), llm_calls[r], saved[r] * votes]
                for r, t in sorted(tiers.items())
            ],
        ),
        "<h2>Training loss</h2>",
        _img(_loss_chart(ledger), "loss"),
    ]
    style = "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}"
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>LoopTool {html.escape(ledger.run)}</title><style>{style}</style></head><body>{''.join(sections)}</body></html>"
    (out / "report.html").write_text(page, encoding="utf-8")
    return out / "report.html", out / "report.png"
