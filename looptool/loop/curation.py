"""Curation: what the next round trains on (the paper's Eq. 5) and when the run stops.

Pure functions over the round ledger and the run config; the curator service only claims the
closure, calls :func:`close` (or :func:`open_run`) and publishes what it decides.

Eq. 5: D(r+1) = error seeds (hard + corrected) ∪ their expansions ∪ high-perplexity mastered
samples ∪ fresh seed data. With ``round_size`` every round has the same size (as in the paper):
where Eq. 5's parts do not fit its budget, they share it equally, a part that needs less leaving
the rest to the others (taking error seeds first left no room for the expansions EDDE made: 60 of
60 slots went to errors on SmolLM2, ``bench/results/loop_vs_static_fresh_floor.json``); fresh seed
data fills what is left.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import overload

import msgspec

from looptool.data.samples import Lineage, Sample
from looptool.loop.ledger import RoundLedger, RunLedger
from looptool.loop.runconfig import RunConfig


class Dataset(msgspec.Struct):
    samples: list[Sample]
    composition: dict[str, int]


def _first_positions(ids: list[str]) -> list[int]:
    """The position of each id's first occurrence, in order."""
    seen: set[str] = set()
    return [i for i, sid in enumerate(ids) if not (sid in seen or seen.add(sid))]  # type: ignore[func-returns-value]


def unique(samples: list[Sample]) -> tuple[list[Sample], int]:
    """The samples with repeated ids removed (first kept), and how many were removed: a round
    counts samples by id, so a repeated id would leave it waiting forever."""
    kept = [samples[i] for i in _first_positions([s.id for s in samples])]
    return kept, len(samples) - len(kept)


def pool_order(ids: list[str], seed: int) -> list[int]:
    """The seed pool's fixed order, as positions in ``ids``: each id once (its first), shuffled
    by the run's seed, so that a replayed run draws the same slices."""
    order = _first_positions(ids)
    random.Random(seed).shuffle(order)
    return order


def shuffled_pool(samples: list[Sample], seed: int) -> list[Sample]:
    """The seed pool in the run's fixed order (what :class:`SeedPool` draws from)."""
    return [samples[i] for i in pool_order([s.id for s in samples], seed)]


_sample_decoder = msgspec.json.Decoder(Sample)


class SeedPool(Sequence[Sample]):
    """A run's seed pool (JSONL) in its fixed order, whose samples are made only where a round
    draws them. Every line is checked once, here; holding the decoded pool is what cost:
    decoding it at every round's close was most of closing a round, and grew faster than the
    pool (the garbage collector walking a curator's large heap): 2.1 s at 29,286 samples, 11.5 s
    at 117,145, against 0.25 s and 1.4 s here (``bench/close_round.py``)."""

    def __init__(self, data: bytes, seed: int, origin: str = "seed pool") -> None:
        self.origin = origin
        lines: list[tuple[int, bytes]] = []  # (line number, line)
        ids = []
        for number, line in enumerate(data.splitlines(), 1):
            if line.strip():
                ids.append(self._decode(number, line).id)  # a bad line fails now, not rounds later
                lines.append((number, line))
        self._lines = [lines[i] for i in pool_order(ids, seed)]

    def __len__(self) -> int:
        return len(self._lines)

    @overload
    def __getitem__(self, index: int) -> Sample: ...
    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...
    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self._decode(*line) for line in self._lines[index]]
        return self._decode(*self._lines[index])

    def _decode(self, number: int, line: bytes) -> Sample:
        try:
            return _sample_decoder.decode(line)
        except msgspec.MsgspecError as exc:
            raise ValueError(f"{self.origin}:{number}: {exc}") from None


def first_round(pool: Sequence[Sample], config: RunConfig) -> Dataset:
    first = list(pool[: config.initial_size or len(pool)])
    return Dataset(first, {"fresh": len(first)})


def next_round(current: RoundLedger, config: RunConfig, pool: Sequence[Sample], fresh_used: int) -> Dataset:
    """Dataset r+1 from round r's outcomes; ``fresh_used`` seed samples went into earlier rounds."""
    cut = config.ppl_cut
    outcomes = current.outcomes(cut)
    carried = current.carried(cut)
    errors = [s for s in carried if outcomes[s.id] in ("hard", "corrected")]  # the error seeds
    mastered = [s for s in carried if outcomes[s.id] == "kept"]
    if "jglv" in config.ablate:  # no verification: every failure trains, with its label as is
        errors = current.failed_as_probed()
        failed = {s.id for s in errors}
        mastered = [s for s in mastered if s.id not in failed]
    if "high_ppl" in config.ablate:
        mastered = []
    seen = {s.id for s in errors + mastered}
    expanded = [] if "edde" in config.ablate else current.expanded()
    expanded = [s for s in expanded if not (s.id in seen or seen.add(s.id))]  # type: ignore[func-returns-value]
    if config.round_size > 0:
        rng = random.Random(f"{config.seed}:{current.round}")
        budget = config.round_size - int(config.round_size * config.fresh_floor)
        n_errors, n_expanded, n_mastered = shares([len(errors), len(expanded), len(mastered)], budget)
        errors, expanded, mastered = (
            _take(errors, n_errors, rng),
            _take(expanded, n_expanded, rng),
            _take(mastered, n_mastered, rng),
        )
    corrected = 0 if "jglv" in config.ablate else sum(outcomes[s.id] == "corrected" for s in errors)
    composition = {
        key: value for key, value in current.composition(cut).items() if key in ("dropped", "discarded", "errored")
    }
    composition |= {
        "hard": len(errors) - corrected,
        "corrected": corrected,
        "kept": len(mastered),
        "expanded": len(expanded),
    }
    fresh: list[Sample] = []
    if config.round_size > 0:
        need = max(0, config.round_size - len(errors) - len(expanded) - len(mastered))
        fresh = [s for s in pool[fresh_used : fresh_used + need] if s.id not in seen]
    composition["fresh"] = len(fresh)
    next_lineage = [
        msgspec.structs.replace(s, lineage=Lineage(origin="seed", round=current.round + 1, source=s.lineage.source))
        for s in fresh
    ]
    return Dataset(errors + expanded + mastered + next_lineage, composition)


class Finish(msgspec.Struct, frozen=True):
    """The run ends after ``round``, for ``reason``."""

    round: int
    reason: str


class Next(msgspec.Struct, frozen=True):
    """Round ``round``'s dataset, each sample id once (``duplicates`` repeats were left out)."""

    round: int
    samples: list[Sample]
    composition: dict[str, int]
    duplicates: int = 0


def open_run(pool: Sequence[Sample], config: RunConfig) -> Next | Finish:
    """What starts a run: round 0's dataset, or its end when the pool holds nothing."""
    return _dataset(0, first_round(pool, config))


def closable(ledger: RunLedger, round: int) -> bool:
    """Whether round ``round`` can be closed now: every sample has its outcome, its evaluation is
    in (or failed for good) where the run waits for one, and neither the next dataset nor the
    run's end exists."""
    if ledger.request is None or ledger.finished is not None:
        return False
    waits = missing_eval(ledger, round) and ledger.round(round).eval_failed is None
    if not ledger.round(round).complete() or waits:
        return False
    return not closed(ledger, round)


def missing_eval(ledger: RunLedger, round: int) -> bool:
    """Whether the run waits for evaluations and round ``round``'s is not in."""
    assert ledger.request is not None
    config = ledger.request.config
    waits = config.wait_for_eval or config.patience > 0 or config.regression_margin > 0
    return waits and ledger.overall(round) is None


def closed(ledger: RunLedger, round: int) -> bool:
    return ledger.finished is not None or (round + 1 in ledger.rounds and ledger.round(round + 1).dataset is not None)


def needs_pool(ledger: RunLedger) -> bool:
    """Whether closing a round draws fresh seed data (the pool must then be given)."""
    return ledger.request is not None and ledger.request.config.round_size > 0


def close(ledger: RunLedger, round: int, pool: Sequence[Sample]) -> Next | Finish:
    """The closure of a complete round (:func:`closable`): the run's end by the stop rules
    (rounds, patience, the regression gate), else dataset r+1 by Eq. 5 — and the end, too, when
    that dataset is empty."""
    assert ledger.request is not None, "a round closes only in a requested run"
    config = ledger.request.config
    failed = ledger.round(round).eval_failed
    if failed is not None and missing_eval(ledger, round):
        return Finish(round, f"round {round}'s evaluation failed for good, and the run waits for evaluations: {failed}")
    scores = [ledger.overall(r) for r in range(round + 1)]
    reason = stop_reason(scores, config, round) or regression_reason(
        ledger.eval_history(round), config.regression_margin
    )
    if reason:
        return Finish(round, reason)
    return _dataset(round + 1, next_round(ledger.round(round), config, pool, ledger.fresh_used(round)))


def _dataset(round: int, dataset: Dataset) -> Next | Finish:
    samples, duplicates = unique(dataset.samples)
    if not samples:
        return Finish(max(0, round - 1), f"dataset for round {round} is empty")
    return Next(round, samples, dataset.composition, duplicates)


def stop_reason(scores: list[float | None], config: RunConfig, round: int) -> str | None:
    """Why the run ends after round ``round`` (None: it goes on). ``scores[r]`` is the evaluated
    overall after round r's training: the run stops after ``config.rounds`` rounds, or when the
    last ``patience`` rounds brought no gain over the best before them."""
    if round + 1 >= config.rounds:
        return f"completed {config.rounds} round(s)"
    if config.patience > 0 and round >= config.patience:
        best_before = max((s for s in scores[: round + 1 - config.patience] if s is not None), default=None)
        recent = [s for s in scores[round + 1 - config.patience : round + 1] if s is not None]
        if best_before is not None and recent and max(recent) <= best_before:
            return f"no eval gain for {config.patience} round(s)"
    return None


def regression_reason(history: list[dict[str, float]], margin: float) -> str | None:
    """The regression gate: why the run ends because the latest evaluation (``history[-1]``)
    fell more than ``margin`` below the best earlier score of some category (None: it did not).
    ``history`` is the base model's metrics, then each round's model's, in order."""
    if margin <= 0 or len(history) < 2:
        return None
    latest, earlier = history[-1], history[:-1]
    falls = []
    for category, score in sorted(latest.items()):
        best = max((m[category] for m in earlier if category in m), default=None)
        if best is not None and best - score > margin:
            falls.append(f"{category} {best:.3f} -> {score:.3f}")
    return f"regression beyond {margin:.3f}: {', '.join(falls)}" if falls else None


def shares(sizes: list[int], budget: int) -> list[int]:
    """How many of each part to take: all of every part when they fit in ``budget``, else equal
    shares, what a part cannot use going to the others (max-min fair), so that a small part is
    kept whole and no part crowds out another; a remainder goes to the earlier parts."""
    if sum(sizes) <= budget:
        return list(sizes)
    taken = [0] * len(sizes)
    left = max(budget, 0)
    open_parts = [i for i, size in enumerate(sizes) if size > 0]
    while left > 0 and open_parts:
        each = left // len(open_parts)
        if each == 0:
            for i in open_parts[:left]:
                taken[i] += 1
            break
        for i in open_parts:
            add = min(each, sizes[i] - taken[i])
            taken[i] += add
            left -= add
        open_parts = [i for i in open_parts if taken[i] < sizes[i]]
    return taken


def _take(samples: list[Sample], n: int, rng: random.Random) -> list[Sample]:
    if n <= 0:
        return []
    if len(samples) <= n:
        return samples
    return [samples[i] for i in sorted(rng.sample(range(len(samples)), n))]
