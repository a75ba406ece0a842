"""The round ledger: a pure fold of a run's events into what happened to every sample.

Applying an event twice changes nothing (every entry is keyed by sample or seed id), so the
ledger can be rebuilt at any time from the event log — after a restart, for a report, in a
test — and always balances: each sample of round r has exactly one terminal outcome.

It admits only what belongs to the run (:meth:`RunLedger.apply` says why it refuses the rest):
work on a sample that is not in its round's dataset, events of rounds before 0 or past the
run's last, a second request, dataset or finish. An event of a round whose dataset it has not
seen yet waits for it (a service's consumers deliver event types in no order relative to each
other) and is admitted or refused when the dataset arrives.

Outcomes: ``kept`` (mastered with high perplexity, or "both right" and kept), ``dropped``
(mastered with low perplexity), ``hard`` (the label was right, the policy wrong), ``corrected``
(the label was wrong and replaced), ``discarded`` (both wrong, or dropped by policy).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Literal

import msgspec

from looptool.data.samples import Sample
from looptool.kernel.events import DeadLetter, Event, ServiceError, decode_event, event_tag
from looptool.loop.events import (
    DatasetReady,
    EvalCompleted,
    EvalShard,
    ExpandResult,
    JudgeVerdict,
    ModelReady,
    ProbeResult,
    RoundStalled,
    RunFinished,
    RunRequested,
    TrainProgress,
    seeds_expansion,
)
from looptool.loop.runconfig import PplCut

Outcome = Literal["kept", "dropped", "hard", "corrected", "discarded", "errored"]
OUTCOMES: tuple[Outcome, ...] = ("kept", "dropped", "hard", "corrected", "discarded", "errored")

# Which dead letters settle which stage of a sample's work: the stage's event tag -> stage name.
# A sample whose work was dead-lettered there ends ``errored`` (unless a replayed letter later
# gives it its real outcome, which then wins).
WORK_STAGES = {"probe.task": "probe", "probe.result": "judge", "judge.verdict": "expand"}
WORKERS = {"probe": "probe", "judge": "judge", "expand": "expander"}
EVALUATOR = "evaluator"
EVAL_STAGES = frozenset({"model.ready", "eval.shard"})  # what the evaluator consumes


class Errored(msgspec.Struct, frozen=True):
    stage: str
    reason: str


class RoundLedger:
    def __init__(self, round: int) -> None:
        self.round = round
        self.dataset: DatasetReady | None = None
        self.model: ModelReady | None = None
        self.probes: dict[str, ProbeResult] = {}
        self.verdicts: dict[str, JudgeVerdict] = {}
        self.expansions: dict[str, ExpandResult] = {}
        self.errored: dict[str, dict[str, Errored]] = {stage: {} for stage in WORKERS}  # stage -> id -> why
        self.evals: dict[str, EvalCompleted] = {}
        # Why the evaluator gave up on this round's evaluation (its first line), if it did: a run
        # that waits for evaluations must then end instead of waiting for one that never comes.
        self.eval_failed: str | None = None
        self.losses: list[tuple[int, float]] = []
        self.total_steps = 0
        self.applied = 0  # events that changed this round: progress, for stall detection
        self.stall: RoundStalled | None = None  # the latest stall report
        self.expanded_count = 0  # samples the expansions made
        self.released = False  # the events' samples dropped (see :meth:`release_samples`)
        self.members: frozenset[str] | None = None  # the dataset's sample ids (None: not known)
        # Kept on insert, so that checking completeness is O(1) per event: consumers deliver
        # results, verdicts and dead letters in no particular order relative to each other.
        self._probed: set[str] = set()  # probe results or probe errors
        self._judge_pending: set[str] = set()  # failed, with neither verdict nor judge error
        self._expand_pending: set[str] = set()  # seeds with neither expansion nor expand error

    def admits(self, sample_id: str) -> bool:
        return self.members is None or sample_id in self.members

    def stalled(self) -> RoundStalled | None:
        """The stall report, while the round has made no progress since it."""
        return self.stall if self.stall is not None and self.stall.progress >= self.applied else None

    def add_probe(self, event: ProbeResult) -> None:
        if event.sample_id in self.probes:
            return
        self.probes[event.sample_id] = event
        self._probed.add(event.sample_id)
        self.applied += 1
        if (
            event.outcome == "failed"
            and event.sample_id not in self.verdicts
            and event.sample_id not in self.errored["judge"]
        ):
            self._judge_pending.add(event.sample_id)

    def add_verdict(self, event: JudgeVerdict) -> None:
        if event.sample_id in self.verdicts:
            return
        self.verdicts[event.sample_id] = event
        self.applied += 1
        self._judge_pending.discard(event.sample_id)
        if (
            seeds_expansion(event.verdict)
            and event.sample_id not in self.expansions
            and event.sample_id not in self.errored["expand"]
        ):
            self._expand_pending.add(event.sample_id)

    def add_expansion(self, event: ExpandResult) -> None:
        if event.seed_id in self.expansions:
            return
        self.expansions[event.seed_id] = event
        self.expanded_count += len(event.samples)
        self.applied += 1
        self._expand_pending.discard(event.seed_id)

    def add_error(self, letter: DeadLetter) -> None:
        if not _settles_work(letter) or letter.sample_id is None:  # (the second: for the type checker)
            return
        stage = WORK_STAGES[letter.stage]
        if letter.sample_id in self.errored[stage]:
            return
        self.errored[stage][letter.sample_id] = Errored(stage, _first_line(letter.error))
        self.applied += 1
        if stage == "probe":
            self._probed.add(letter.sample_id)
        elif stage == "judge":
            self._judge_pending.discard(letter.sample_id)
        else:
            self._expand_pending.discard(letter.sample_id)

    # ----------------------------------------------------------------- progress

    @property
    def size(self) -> int:
        return self.dataset.size if self.dataset else 0

    def failed(self) -> list[str]:
        return [sid for sid, p in self.probes.items() if p.outcome == "failed"]

    def seeds(self) -> list[str]:
        return [sid for sid, v in self.verdicts.items() if seeds_expansion(v.verdict)]

    def missing(self) -> dict[str, int]:
        """What the round still waits for (empty when every sample is accounted for)."""
        waiting = {
            "probe": self.size - len(self._probed) if self.dataset else -1,
            "judge": len(self._judge_pending),
            "expand": len(self._expand_pending),
        }
        return {stage: n for stage, n in waiting.items() if n != 0}

    def waiting_for(self, limit: int = 20) -> dict[str, list[str]]:
        """Sample ids the round waits for, per stage (probe: unknown ids, so none listed)."""
        return {"judge": sorted(self._judge_pending)[:limit], "expand": sorted(self._expand_pending)[:limit]}

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
        for sid in self.errored["probe"]:
            if sid not in self.probes:
                result[sid] = "errored"
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
            elif sid in self.errored["judge"]:
                result[sid] = "errored"
        return result

    def errored_by_reason(self) -> dict[str, int]:
        """Errored work per ``stage: reason``, for watch and the report (expansions included)."""
        counts: Counter[str] = Counter()
        for stage, errors in self.errored.items():
            for sid, error in errors.items():
                settled = sid in (
                    self.probes if stage == "probe" else self.verdicts if stage == "judge" else self.expansions
                )
                if not settled:
                    counts[f"{stage}: {error.reason}"] += 1
        return dict(counts)

    def composition(self, cut: PplCut) -> dict[str, int]:
        counts = Counter(self.outcomes(cut).values())
        return {outcome: counts.get(outcome, 0) for outcome in OUTCOMES} | {"expanded": self.expanded_count}

    def release_samples(self) -> None:
        """Drop the samples the round's events carry, keeping every outcome and count. A closed
        round's samples live on in the next round's dataset; a curator holding every round's
        grows with the run (1.4 GB after four rounds of the paper's size)."""
        # Copies, not edits: whoever else holds these events keeps them whole.
        self.probes = {sid: msgspec.structs.replace(p, sample=None) for sid, p in self.probes.items()}
        self.verdicts = {sid: msgspec.structs.replace(v, sample=None) for sid, v in self.verdicts.items()}
        self.expansions = {sid: msgspec.structs.replace(e, samples=[]) for sid, e in self.expansions.items()}
        self.released = True

    def _need_samples(self) -> None:
        if self.released:
            raise RuntimeError(f"round {self.round}'s samples were released when it closed")

    def carried(self, cut: PplCut) -> list[Sample]:
        """The samples this round passes on (kept, hard, corrected), labels as verified."""
        self._need_samples()
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

    def failed_as_probed(self) -> list[Sample]:
        """Every failed probe's sample with its label as probed, by id (for the "w/o JGLV" ablation)."""
        self._need_samples()
        return [
            probe.sample
            for _, probe in sorted(self.probes.items())
            if probe.outcome == "failed" and probe.sample is not None
        ]

    def expanded(self) -> list[Sample]:
        self._need_samples()
        return [s for seed in sorted(self.expansions) for s in self.expansions[seed].samples]


def _settles_work(letter: DeadLetter) -> bool:
    """Whether a letter is a stage's worker giving up on a sample's work there."""
    stage = WORK_STAGES.get(letter.stage)
    return stage is not None and letter.sample_id is not None and letter.service == WORKERS[stage]


def _first_line(error: str) -> str:
    """What a dead letter's error says, for a ledger: its first line, at most 200 characters."""
    return error.splitlines()[0][:200] if error else ""


def _fails_evaluation(letter: DeadLetter, round: RoundLedger) -> bool:
    """Whether a letter is the evaluator giving up on the round's model's evaluation: its start
    (``model.ready``) or a part of it (``eval.shard``) for that model — not the base model's."""
    if letter.service != EVALUATOR or letter.stage not in EVAL_STAGES:
        return False
    if letter.stage == "model.ready":
        return True
    try:
        shard = decode_event(letter.data)
    except Exception:  # a part that names no model: nothing to tell
        return False
    return isinstance(shard, EvalShard) and round.model is not None and shard.model == round.model.model


def _sample_of(event: Event) -> str | None:
    """The sample of the round's dataset that an event is work on (None: round-level)."""
    if isinstance(event, DeadLetter):
        return event.sample_id
    if isinstance(event, (ProbeResult, JudgeVerdict, ExpandResult)):
        return event.work_item()
    return None


class RunLedger:
    """Every round of one run, plus run-level facts (request, errors, dead letters, finish)."""

    def __init__(self, run: str, *, release_closed_rounds: bool = False) -> None:
        """``release_closed_rounds``: drop a round's samples once the next round's dataset is
        in (the curator's ledgers: closing a round needs only its own samples)."""
        self.run = run
        self.release_closed_rounds = release_closed_rounds
        self.request: RunRequested | None = None
        self.rounds: dict[int, RoundLedger] = {}
        self.finished: RunFinished | None = None
        self.errors = 0
        self.dead_letters = 0
        self.refused: Counter[str] = Counter()  # events not admitted, by reason
        self._deferred: dict[int, list[Event]] = {}  # round -> events waiting for its dataset

    def round(self, r: int) -> RoundLedger:
        if r not in self.rounds:
            self.rounds[r] = RoundLedger(r)
        return self.rounds[r]

    def apply(self, event: Event) -> str | None:
        """Fold ``event`` in. Returns why it is refused (None: admitted, or waiting for its
        round's dataset); refusals are counted by reason in :attr:`refused`."""
        refusal = self._apply(event)
        if refusal is not None:
            self.refused[refusal.split(":")[0]] += 1
        return refusal

    def _apply(self, event: Event) -> str | None:
        match event:
            case RunRequested():
                if self.request is not None:
                    return "a second run.requested: the first stands"
                self.request = event
                self._refuse_beyond_rounds()
                return None
            case RunFinished():
                if self.finished is None:
                    self.finished = event
                    self._deferred.clear()
                return None
            case ServiceError():
                self.errors += 1
                return None
            case DeadLetter() if not _settles_work(event):
                self.dead_letters += 1  # a message no sample's outcome waits for
                current = self.rounds.get(event.round)
                if current is not None and _fails_evaluation(event, current):
                    current.eval_failed = current.eval_failed or _first_line(event.error)
                return None
        round = event.round
        if round < 0 or (self.request is not None and round >= self.request.config.rounds):
            last = self.request.config.rounds - 1 if self.request is not None else "?"
            return f"round out of range: {round} (the run's rounds are 0..{last})"
        if isinstance(event, DatasetReady):
            if round in self.rounds and self.rounds[round].dataset is not None:
                return f"a second dataset.ready: round {round}'s first stands"
            ledger = self.round(round)
            ledger.dataset = event
            ledger.members = frozenset(event.sample_ids) if event.sample_ids or not event.size else None
            closed = self.rounds.get(round - 1)
            if self.release_closed_rounds and closed is not None and not closed.released:
                closed.release_samples()
            for waiting in self._deferred.pop(round, []):
                self.apply(waiting)
            return None
        if round not in self.rounds or self.rounds[round].dataset is None:
            if self.finished is not None:
                return f"round without a dataset: {round}, after the run finished"
            self._deferred.setdefault(round, []).append(event)
            return None
        return self._apply_to_round(self.rounds[round], event)

    def _refuse_beyond_rounds(self) -> None:
        """Now that the run's rounds are known, refuse the waiting events beyond them."""
        assert self.request is not None
        for round in [r for r in self._deferred if r >= self.request.config.rounds]:
            for event in self._deferred.pop(round):
                self.apply(event)

    def _apply_to_round(self, ledger: RoundLedger, event: Event) -> str | None:
        sample_id = _sample_of(event)
        if sample_id is not None and not ledger.admits(sample_id):
            return f"not in the round's dataset: {event_tag(type(event))} for sample {sample_id[:80]!r} in round {ledger.round}"
        match event:
            case ModelReady():
                ledger.model = ledger.model or event
            case ProbeResult():
                ledger.add_probe(event)
            case JudgeVerdict():
                ledger.add_verdict(event)
            case ExpandResult():
                ledger.add_expansion(event)
            case EvalCompleted():
                ledger.evals.setdefault(event.model, event)
            case TrainProgress():
                if all(step != event.step for step, _ in ledger.losses):
                    ledger.losses.append((event.step, event.loss))
                    ledger.losses.sort()
                ledger.total_steps = event.total_steps
            case RoundStalled():
                ledger.stall = event
            case DeadLetter():
                self.dead_letters += 1
                ledger.add_error(event)
        return None

    def open_rounds(self) -> list[int]:
        """Rounds with a dataset whose next dataset has not come (nor the run's finish)."""
        if self.finished is not None:
            return []
        return [
            r
            for r, ledger in sorted(self.rounds.items())
            if ledger.dataset is not None and (r + 1 not in self.rounds or self.rounds[r + 1].dataset is None)
        ]

    def fresh_used(self, through: int) -> int:
        """Seed samples drawn fresh into rounds 0..``through``."""
        datasets = [self.rounds[r].dataset for r in range(through + 1) if r in self.rounds]
        return sum(d.composition.get("fresh", 0) for d in datasets if d is not None)

    def policy_metrics(self, r: int) -> dict[str, float]:
        """The evaluated policy's metrics after round r's training (empty until evaluated)."""
        ledger = self.rounds.get(r)
        if ledger is None or ledger.model is None or ledger.model.model not in ledger.evals:
            return {}
        return ledger.evals[ledger.model.model].metrics

    def eval_history(self, r: int) -> list[dict[str, float]]:
        """Metrics of the base model (when evaluated) and of each round's model through round r."""
        history = []
        first = self.rounds.get(0)
        if first is not None:
            trained = first.model.model if first.model else None
            history += [e.metrics for name, e in sorted(first.evals.items()) if name != trained]
        return history + [m for m in map(self.policy_metrics, range(r + 1)) if m]

    def overall(self, r: int) -> float | None:
        """The evaluated policy's overall accuracy after round r's training."""
        return self.policy_metrics(r).get("overall")
