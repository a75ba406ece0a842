"""``looptool lint``: what a dataset holds before anyone trains on it.

Rows and rejects (by field), exact and near duplicates, schema problems, labels that fail their
own tools (kept here, flagged, so they can be counted), argument values not grounded in the
conversation, distributions, and contamination against evaluation sets.

Contamination is measured two ways against every eval sample (BFCL's own data from the
installed ``bfcl-eval``, plus any file given):

* **tool-schema fingerprint** — a tool's name with its sorted parameter names; a sample
  *overlaps* when one of its tools has an eval tool's fingerprint;
* **query n-grams** — word 8-grams of the user turns (the whole query when shorter); a sample
  *matches* when at least half of its n-grams occur in eval queries.

A sample is **contaminated** when its query matches, or when its tools overlap and it shares
any n-gram with an eval query; ``--decontaminate`` writes the dataset without those.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from looptool.data.dedup import NearDuplicateIndex, request_text, words
from looptool.data.samples import Sample, ToolSpec

NGRAM = 8


class Contamination(msgspec.Struct):
    eval_samples: int = 0
    eval_sources: list[str] = msgspec.field(default_factory=list)
    tool_overlap: int = 0  # samples offering a tool whose fingerprint an eval sample offers
    query_match: int = 0  # samples whose query n-grams are at least half in eval queries
    contaminated: int = 0
    contaminated_ids: list[str] = msgspec.field(default_factory=list)


class LintReport(msgspec.Struct):
    path: str
    format: str
    rows: int = 0
    samples: int = 0
    rejected: dict[str, int] = msgspec.field(default_factory=dict)  # by field
    reject_examples: list[str] = msgspec.field(default_factory=list)  # path:line: field: why
    exact_duplicates: int = 0  # rows repeating an earlier row (collapsed on import)
    near_duplicates: int = 0  # samples within MinHash Jaccard 0.85 of an earlier one
    schema_problems: int = 0  # rows rejected for their tool schemas
    label_failures: int = 0  # labels that fail their own tools
    label_failure_examples: list[str] = msgspec.field(default_factory=list)
    ungrounded: int = 0  # samples with a label argument value found nowhere in the conversation
    ungrounded_examples: list[str] = msgspec.field(default_factory=list)
    categories: dict[str, int] = msgspec.field(default_factory=dict)
    turns: dict[str, int] = msgspec.field(default_factory=dict)  # messages before the label
    tools_offered: dict[str, int] = msgspec.field(default_factory=dict)
    calls_per_label: dict[str, int] = msgspec.field(default_factory=dict)
    no_call_share: float = 0.0
    contamination: Contamination = msgspec.field(default_factory=Contamination)


def ngrams(text: str, n: int = NGRAM) -> set[str]:
    tokens = words(text)
    if len(tokens) < n:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def fingerprint(tool: ToolSpec) -> str:
    properties = tool.function.parameters.get("properties", {})
    return f"{tool.function.name}({','.join(sorted(properties)) if isinstance(properties, dict) else ''})"


def ungrounded_values(sample: Sample) -> list[tuple[str, str, Any]]:
    """``(call, parameter, value)`` for label values of string or number type that appear nowhere
    in the conversation (case-insensitive); such values were invented by whoever wrote the label."""
    text = " ".join(
        [m.content or "" for m in sample.messages]
        + [msgspec.json.encode(c.arguments).decode() for m in sample.messages for c in m.tool_calls]
    ).lower()
    missing = []
    for call in sample.label:
        for name, value in call.arguments.items():
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                continue
            shown = value if isinstance(value, str) else format(value, "g")
            if shown and shown.lower() not in text:
                missing.append((call.name, name, value))
    return missing


def _bucket(n: int, edges: Iterable[int] = (0, 1, 2, 3, 5, 10)) -> str:
    edges = list(edges)
    for low, high in zip(edges, edges[1:], strict=False):
        if low <= n < high:
            return str(low) if high == low + 1 else f"{low}-{high - 1}"
    return f"{edges[-1]}+"


def lint(
    path: str | Path,
    fmt: str,
    samples: list[Sample],
    rows: int,
    rejects: list[Any],
    duplicates: int,
    evals: dict[str, list[Sample]],
) -> LintReport:
    report = LintReport(path=str(path), format=fmt, rows=rows, samples=len(samples), exact_duplicates=duplicates)
    for error in rejects:
        report.rejected[error.field] = report.rejected.get(error.field, 0) + 1
        report.schema_problems += error.field.startswith("tools")
    report.reject_examples = [str(e) for e in rejects[:10]]
    near = NearDuplicateIndex()
    for sample in samples:
        report.near_duplicates += near.seen_or_add(sample)
        if "suspect_label" in sample.meta:
            report.label_failures += 1
            if len(report.label_failure_examples) < 10:
                report.label_failure_examples.append(f"{sample.lineage.source}: {sample.meta['suspect_label']}")
        missing = ungrounded_values(sample)
        if missing:
            report.ungrounded += 1
            if len(report.ungrounded_examples) < 10:
                call, name, value = missing[0]
                report.ungrounded_examples.append(f"{sample.lineage.source}: {call}.{name}={value!r}")
    report.categories = dict(Counter(s.category for s in samples).most_common())
    report.turns = dict(sorted(Counter(_bucket(len(s.messages)) for s in samples).items()))
    report.tools_offered = dict(sorted(Counter(_bucket(len(s.tools)) for s in samples).items()))
    report.calls_per_label = dict(sorted(Counter(_bucket(len(s.label)) for s in samples).items()))
    report.no_call_share = round(sum(not s.label for s in samples) / len(samples), 4) if samples else 0.0
    report.contamination = contamination(samples, evals)
    return report


def contamination(samples: list[Sample], evals: dict[str, list[Sample]]) -> Contamination:
    result = Contamination(eval_sources=sorted(evals), eval_samples=sum(len(v) for v in evals.values()))
    eval_tools = {fingerprint(t) for items in evals.values() for s in items for t in s.tools}
    eval_grams: set[str] = set()
    for items in evals.values():
        for s in items:
            eval_grams |= ngrams(request_text(s))
    for sample in samples:
        grams = ngrams(request_text(sample))
        shared = len(grams & eval_grams)
        overlap = any(fingerprint(t) in eval_tools for t in sample.tools)
        matches = bool(grams) and shared * 2 >= len(grams)
        result.tool_overlap += overlap
        result.query_match += matches
        if matches or (overlap and shared):
            result.contaminated += 1
            result.contaminated_ids.append(sample.id)
    return result


def bfcl_eval_samples() -> dict[str, list[Sample]]:
    """BFCL's single-turn AST categories, from the installed ``bfcl-eval`` (empty without it)."""
    from looptool.data import bfcl_reference
    from looptool.data.formats import import_file
    from looptool.data.formats.bfcl import AST_CATEGORIES

    try:
        files = {category: bfcl_reference.category_files(category) for category in AST_CATEGORIES}
    except ModuleNotFoundError:
        return {}
    return {f"bfcl:{c}": import_file(q, "bfcl", a).samples for c, (q, a) in files.items() if q.exists()}


def render(report: LintReport) -> str:
    c = report.contamination
    lines = [
        f"{report.path} ({report.format}): {report.rows} rows, {report.samples} samples",
        f"rejected: {sum(report.rejected.values())} {report.rejected or ''}".rstrip(),
        *[f"  {example}" for example in report.reject_examples[:5]],
        f"duplicates: {report.exact_duplicates} exact (collapsed), {report.near_duplicates} near",
        f"schema problems: {report.schema_problems}",
        f"labels failing their own tools: {report.label_failures}",
        *[f"  {example}" for example in report.label_failure_examples[:5]],
        f"labels with values not grounded in the conversation: {report.ungrounded}",
        *[f"  {example}" for example in report.ungrounded_examples[:5]],
        f"categories: {report.categories}",
        f"turns before the label: {report.turns}",
        f"tools offered: {report.tools_offered}",
        f"calls per label: {report.calls_per_label} (no call: {report.no_call_share:.1%})",
        f"contamination against {c.eval_samples} eval samples ({len(c.eval_sources)} sets): "
        f"{c.tool_overlap} share a tool schema, {c.query_match} match a query, {c.contaminated} contaminated",
    ]
    return "\n".join(lines)
