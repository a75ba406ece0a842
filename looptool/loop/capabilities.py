"""What a round says about the policy's capabilities: failures by kind and category, which
weaknesses the expansions targeted, and which labels the judge corrected. Plain functions of a
:class:`~looptool.loop.ledger.RoundLedger`, for the report's dashboard."""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from looptool.data.samples import ToolCall
from looptool.loop.ledger import RoundLedger

# The checker's error types (BFCL's, plus ``parse`` from the probe) by the kind of mistake.
_KINDS = (
    ("parse", "unparseable output"),
    ("irrelevance_error", "over-call"),
    ("no_call", "missed call"),
    ("wrong_func_name", "wrong function"),
    ("unknown_function", "wrong function"),
    ("missing_required", "missing parameter"),
    ("missing_optional", "missing parameter"),
    ("unexpected_param", "unexpected parameter"),
    ("type_error", "wrong type"),
    ("value_error", "wrong value"),
    ("wrong_count", "wrong number of calls"),
    ("cannot_find_match", "parallel calls unmatched"),
)
FAILURE_KINDS = tuple(dict.fromkeys(kind for _, kind in _KINDS)) + ("other",)


def failure_kind(error_type: str | None) -> str:
    """``simple_function_checker:missing_required`` -> ``missing parameter``."""
    for marker, kind in _KINDS:
        if error_type and marker in error_type:
            return kind
    return "other"


def failures_by_kind(round: RoundLedger) -> dict[str, int]:
    counts = Counter(failure_kind(p.error_type) for p in round.probes.values() if p.outcome == "failed")
    return {kind: counts[kind] for kind in FAILURE_KINDS if counts[kind]}


def failures_by_category(round: RoundLedger) -> dict[str, tuple[int, int]]:
    """category -> (failed, probed)."""
    probed: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for probe in round.probes.values():
        category = probe.sample.category if probe.sample is not None else "unknown"
        probed[category] += 1
        failed[category] += probe.outcome == "failed"
    return {category: (failed[category], probed[category]) for category in sorted(probed)}


def expansion_targets(round: RoundLedger) -> dict[str, int]:
    """Samples the expander wrote, by the kind of failure that seeded them."""
    targets: Counter[str] = Counter()
    for seed_id, expansion in round.expansions.items():
        probe = round.probes.get(seed_id)
        if probe is not None and expansion.samples:
            targets[failure_kind(probe.error_type)] += len(expansion.samples)
    return {kind: targets[kind] for kind in FAILURE_KINDS if targets[kind]}


class Correction(NamedTuple):
    sample_id: str
    before: list[ToolCall]
    after: list[ToolCall]


def corrections(round: RoundLedger) -> list[Correction]:
    """Labels the judge replaced, with the label before and after."""
    fixed = []
    for sample_id, verdict in sorted(round.verdicts.items()):
        probe = round.probes.get(sample_id)
        if verdict.action == "label_fixed" and verdict.corrected_label is not None:
            before = probe.sample.label if probe is not None and probe.sample is not None else []
            fixed.append(Correction(sample_id, before, verdict.corrected_label))
    return fixed
