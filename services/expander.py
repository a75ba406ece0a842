"""Error-Driven Data Expansion (EDDE).

Listens to ``judge.verdict``; every verified failure — prediction wrong, label wrong, and both
wrong (the correct calls then inferred from the judge's approach) — is a seed. The generator
(an LLM with guided JSON output, or the synthetic world offline) writes new samples that
exercise the same weakness; each is validated, checked against the round's dataset and the
other expansions for (near-)duplicates, and the survivors are emitted in one ``expand.result``
with the rejects counted by reason.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

from nats.js.errors import KeyWrongLastSequenceError

from looptool import subjects
from looptool.dedup import NearDuplicateIndex, exact_key
from looptool.errors import PermanentError
from looptool.expansion import as_expansion, generate_with_llm, rejection_reason, seed_rng
from looptool.formats import decode_samples
from looptool.runtime import Context, Service
from looptool.schemas import DatasetReady, ExpandResult, JudgeVerdict, Sample
from looptool.worlds.synthetic import World

service = Service("expander", "Error-Driven Data Expansion: one expand.result per verified failure")

SEED_VERDICTS = {"prediction_wrong", "label_wrong", "both_wrong"}
_indexes: OrderedDict[tuple[str, int], NearDuplicateIndex] = OrderedDict()  # (run, round) -> index


@service.on(JudgeVerdict)
async def expand(ctx: Context, verdict: JudgeVerdict) -> None:
    if verdict.verdict not in SEED_VERDICTS:
        return
    if verdict.sample is None:
        raise PermanentError(f"judge.verdict for {verdict.sample_id} carries no sample")
    settings = ctx.settings.expander
    seed = verdict.sample
    rng = seed_rng(settings.seed, verdict.round, seed.id)  # not the run: same seed, same expansions
    index = await _dataset_index(ctx, verdict.run, verdict.round)
    ours = NearDuplicateIndex(settings.near_duplicate)  # this seed's own, until they are published
    accepted: list[Sample] = []
    rejected: Counter[str] = Counter()

    for _attempt in range(1 + settings.retries):
        if settings.mode == "world":
            candidates, unreadable = World(settings.seed).similar(seed, settings.k, rng), {}
            generator, prompt = "world", "world"
        else:
            endpoint = ctx.settings.generator_model
            candidates, unreadable = await generate_with_llm(ctx.client_for(endpoint), endpoint.model, settings, verdict, seed, rng)
            generator, prompt = endpoint.model, settings.prompt
        rejected.update(unreadable)
        for candidate in candidates:
            reason = rejection_reason(candidate) or await _duplicate(ctx, (index, ours), candidate, verdict)
            if reason:
                rejected[reason] += 1
                continue
            ours.add(candidate)
            accepted.append(as_expansion(candidate, seed, verdict.round, generator, prompt))
            if len(accepted) == settings.k:
                break
        if len(accepted) == settings.k:
            break

    await ctx.publish(ExpandResult(run=verdict.run, round=verdict.round, seed_id=seed.id, samples=accepted, rejected=dict(rejected)))
    for sample in accepted:  # only now: a redelivered attempt must not reject its own samples
        index.add(sample)
    ctx.log.info("expanded", seed=seed.id, accepted=len(accepted), rejected=dict(rejected))


async def _duplicate(ctx: Context, indexes: tuple[NearDuplicateIndex, ...], candidate: Sample, verdict: JudgeVerdict) -> str | None:
    if any(index.is_duplicate(candidate) for index in indexes):
        return "duplicate"
    # Other replicas expand other seeds of the same round: claim the sample's exact key in KV.
    # A key already held by this seed is ours from an earlier attempt (a redelivery).
    key = f"expansions.{verdict.run}.r{verdict.round}.{exact_key(candidate)}"
    try:
        await ctx.bus.state.create(key, verdict.sample_id.encode())
    except KeyWrongLastSequenceError:
        held = await ctx.bus.state.get(key)
        if held.value != verdict.sample_id.encode():
            return "duplicate"
    return None


async def _dataset_index(ctx: Context, run: str, round: int) -> NearDuplicateIndex:
    """An index of the round's dataset (from its dataset.ready event), cached per process."""
    key = (run, round)
    if key not in _indexes:
        index = NearDuplicateIndex(ctx.settings.expander.near_duplicate)
        async for _, event in ctx.bus.read(subjects.for_type(DatasetReady, run)):
            if isinstance(event, DatasetReady) and event.round == round:
                for sample in decode_samples(await ctx.bus.get_artifact(event.dataset), event.dataset.name):
                    index.add(sample)
        _indexes[key] = index
        while len(_indexes) > 4:
            _indexes.popitem(last=False)
    return _indexes[key]
