"""The round ledger: a pure fold of a run's events into what happened to every sample.

Applying an event twice changes nothing (every entry is keyed by sample or seed id), so the
ledger can be rebuilt at any time from the event log — after a restart, for a report, in a
test — and always balances: each sample of round r has exactly one terminal outcome.

Outcomes: ``kept`` (mastered with high perplexity, or "both right" and kept), ``dropped``
(mastered with low perplexity), ``hard`` (the label was right, the policy wrong), ``corrected``
(the label was wrong and replaced), ``discarded`` (both wrong, or dropped by policy).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Literal

import msgspec

from .schemas import (
    DatasetReady,
    DeadLetter,
    EvalCompleted,
    Event,
    ExpandResult,
    JudgeVerdict,
    ModelReady,
    ProbeResult,
    RunFinished,
    RunRequested,
    Sample,
    ServiceError,
    TrainProgress,
)

Outcome = Literal["kept", "dropped", "hard", "corrected", "discarded"]
OUTCOMES: tuple[Outcome, ...] = ("kept", "dropped", "hard", "corrected", "discarded")
SEED_VERDICTS = frozenset({"prediction_wrong", "label_wrong", "both_wrong"})


class PplCut(msgspec.Struct, frozen=True):
    """Which mastered samples stay: ``percentile`` p keeps those at or above the p-th percentile
    of the round's mastered perplexities; ``threshold`` t keeps those with ppl >= t."""

    mode: Literal["percentile", "threshold"] = "percentile"
    value: float = 50.0


class RoundLedger:
    def __init__(self, round: int) -> None:
        self.round = round
        self.dataset: DatasetReady | None = None
        self.model: ModelReady | None = None
        self.probes: dict[str, ProbeResult] = {}
        self.verdicts: dict[str, JudgeVerdict] = {}
        self.expansions: dict[str, ExpandResult] = {}
        self.evals: dict[str, EvalCompleted] = {}
        self.losses: list[tuple[int, float]] = []
        self.total_steps = 0
        # Counters kept on insert, so that checking completeness is O(1) per event: consumers
        # deliver probe results and verdicts in no particular order relative to each other.
        self._failed = 0
        self._judged = 0  # failed samples that have a verdict
        self._seeds = 0  # verdicts that seed an expansion
        self._expanded = 0  # seeds that have an expansion result

    def add_probe(self, event: ProbeResult) -> None:
        if event.sample_id in self.probes:
            return
        self.probes[event.sample_id] = event
        if event.outcome == "failed":
            self._failed += 1
            self._judged += event.sample_id in self.verdicts

    def add_verdict(self, event: JudgeVerdict) -> None:
        if event.sample_id in self.verdicts:
            return
        self.verdicts[event.sample_id] = event
        probe = self.probes.get(event.sample_id)
        self._judged += probe is not None and probe.outcome == "failed"
        if event.verdict in SEED_VERDICTS:
            self._seeds += 1
            self._expanded += event.sample_id in self.expansions

    def add_expansion(self, event: ExpandResult) -> None:
        if event.seed_id in self.expansions:
            return
        self.expansions[event.seed_id] = event
        verdict = self.verdicts.get(event.seed_id)
        self._expanded += verdict is not None and verdict.verdict in SEED_VERDICTS

    # ----------------------------------------------------------------- progress

    @property
    def size(self) -> int:
        return self.dataset.size if self.dataset else 0

    def failed(self) -> list[str]:
        return [sid for sid, p in self.probes.items() if p.outcome == "failed"]

    def seeds(self) -> list[str]:
        return [sid for sid, v in self.verdicts.items() if v.verdict in SEED_VERDICTS]

    def missing(self) -> dict[str, int]:
        """What the round still waits for (empty when every sample is accounted for)."""
        waiting = {
            "probe": self.size - len(self.probes) if self.dataset else -1,
            "judge": self._failed - self._judged,
            "expand": self._seeds - self._expanded,
        }
        return {stage: n for stage, n in waiting.items() if n != 0}

    def complete(self) -> bool:
        return self.dataset is not None and not self.missing()

    # ----------------------------------------------------------------- outcomes

    def ppl_cut(self, cut: PplCut) -> float:
        values = sorted(p.ppl for p in self.probes.values() if p.outcome == "mastered" and p.ppl is not None)
        if cut.mode == "threshold":
            return cut.value
        if not values:
            return math.inf
        index = min(len(values) - 1, max(0, math.ceil(len(values) * cut.value / 100) - 1))
        return values[index]

    def outcomes(self, cut: PplCut) -> dict[str, Outcome]:
        """Terminal outcome per probed sample (those still waiting are absent)."""
        threshold = self.ppl_cut(cut)
        result: dict[str, Outcome] = {}
        for sid, probe in self.probes.items():
            if probe.outcome == "mastered":
                result[sid] = "kept" if probe.ppl is not None and probe.ppl >= threshold else "dropped"
            elif sid in self.verdicts:
                verdict = self.verdicts[sid]
                if verdict.action == "discard":
                    result[sid] = "discarded"
                elif verdict.action == "label_fixed":
                    result[sid] = "corrected"
                elif verdict.verdict == "both_right":
                    result[sid] = "kept"
                else:
                    result[sid] = "hard"
        return result

    def composition(self, cut: PplCut) -> dict[str, int]:
        counts = Counter(self.outcomes(cut).values())
        return {outcome: counts.get(outcome, 0) for outcome in OUTCOMES} | {"expanded": sum(len(e.samples) for e in self.expansions.values())}

    def carried(self, cut: PplCut) -> list[Sample]:
        """The samples this round passes on (kept, hard, corrected), labels as verified."""
        outcomes = self.outcomes(cut)
        carried = []
        # By id, not by arrival: the next round's dataset (and so its training order) must not
        # depend on which replica answered first.
        for sid, outcome in sorted(outcomes.items()):
            if outcome not in ("kept", "hard", "corrected"):
                continue
            verdict = self.verdicts.get(sid)
            sample = verdict.sample if verdict is not None and verdict.sample is not None else self.probes[sid].sample
            if sample is not None:
                carried.append(sample)
        return carried

    def expanded(self) -> list[Sample]:
        return [s for seed in sorted(self.expansions) for s in self.expansions[seed].samples]


class RunLedger:
    """Every round of one run, plus run-level facts (request, errors, dead letters, finish)."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.request: RunRequested | None = None
        self.rounds: dict[int, RoundLedger] = {}
        self.finished: RunFinished | None = None
        self.errors = 0
        self.dead_letters = 0

    def round(self, r: int) -> RoundLedger:
        if r not in self.rounds:
            self.rounds[r] = RoundLedger(r)
        return self.rounds[r]

    def apply(self, event: Event) -> None:
        match event:
            case RunRequested():
                self.request = event
            case DatasetReady():
                self.round(event.round).dataset = event
            case ModelReady():
                self.round(event.round).model = event
            case ProbeResult():
                self.round(event.round).add_probe(event)
            case JudgeVerdict():
                self.round(event.round).add_verdict(event)
            case ExpandResult():
                self.round(event.round).add_expansion(event)
            case EvalCompleted():
                self.round(event.round).evals.setdefault(event.model, event)
            case TrainProgress():
                ledger = self.round(event.round)
                if all(step != event.step for step, _ in ledger.losses):
                    ledger.losses.append((event.step, event.loss))
                    ledger.losses.sort()
                ledger.total_steps = event.total_steps
            case RunFinished():
                self.finished = event
            case ServiceError():
                self.errors += 1
            case DeadLetter():
                self.dead_letters += 1
            case _:
                pass

    def overall(self, r: int) -> float | None:
        """The evaluated policy's overall accuracy after round r's training."""
        ledger = self.rounds.get(r)
        if ledger is None or ledger.model is None or ledger.model.model not in ledger.evals:
            return None
        return ledger.evals[ledger.model.model].metrics.get("overall")
