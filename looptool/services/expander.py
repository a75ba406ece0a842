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

import anyio
import anyio.to_thread

from looptool.data.dedup import NearDuplicateIndex, exact_key
from looptool.data.samples import Sample
from looptool.data.worlds.synthetic import World
from looptool.kernel.errors import PermanentError
from looptool.kernel.runtime import Service
from looptool.llm.client import ModelClients
from looptool.loop import keys
from looptool.loop.events import DatasetReady, ExpandResult, JudgeVerdict, seeds_expansion
from looptool.loop.expansion import as_expansion, generate_with_llm, rejection_reason, seed_rng
from looptool.loop.settings import LoopContext

service = Service(
    "expander",
    "Error-Driven Data Expansion: one expand.result per verified failure",
    emits=(ExpandResult,),
    reads=(DatasetReady,),
)


class DatasetIndexes:
    """Near-duplicate indexes of the rounds' datasets, the latest few kept (per process)."""

    def __init__(self, _ctx: object = None) -> None:
        self.by_round: OrderedDict[tuple[str, int], NearDuplicateIndex] = OrderedDict()
        # One build at a time: every handler in flight missed the cache together at the start
        # of a round, and 32 builds of a paper-size dataset at once starved the event loop
        # until the server cut the connection as a slow consumer.
        self.building = anyio.Lock()


@service.on(JudgeVerdict, once=True)
async def expand(ctx: LoopContext, verdict: JudgeVerdict) -> None:
    if not seeds_expansion(verdict.verdict):
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
            world = World.of(settings.world_catalogue, settings.seed, held_out=settings.world_held_out)
            candidates, unreadable = world.similar(seed, settings.k, rng), dict[str, int]()
            generator, prompt = "world", "world"
        else:
            endpoint = ctx.settings.generator_model
            client = ctx.use(ModelClients).get(endpoint)
            candidates, unreadable = await generate_with_llm(client, endpoint.model, settings, verdict, seed, rng)
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

    await ctx.publish(
        ExpandResult(run=verdict.run, round=verdict.round, seed_id=seed.id, samples=accepted, rejected=dict(rejected))
    )
    for sample in accepted:  # only now: a redelivered attempt must not reject its own samples
        index.add(sample)
    ctx.log.info("expanded", seed=seed.id, accepted=len(accepted), rejected=dict(rejected))


async def _duplicate(
    ctx: LoopContext, indexes: tuple[NearDuplicateIndex, ...], candidate: Sample, verdict: JudgeVerdict
) -> str | None:
    if any(index.is_duplicate(candidate) for index in indexes):
        return "duplicate"
    # Other replicas expand other seeds of the same round: claim the sample's exact key for this
    # seed. A key this seed already holds is its own from an earlier attempt (a redelivery).
    key = keys.expansion_key(verdict.run, verdict.round, exact_key(candidate))
    return None if await ctx.claim(key, owner=verdict.sample_id) else "duplicate"


async def _dataset_index(ctx: LoopContext, run: str, round: int) -> NearDuplicateIndex:
    """An index of the round's dataset (from its dataset.ready event)."""
    indexes = ctx.use(DatasetIndexes)
    cache = indexes.by_round
    async with indexes.building:
        if (run, round) not in cache:
            samples = [
                sample
                async for event in ctx.events(run, DatasetReady)
                if event.round == round
                for sample in await ctx.load(event.dataset, Sample)
            ]
            # MinHash of every sample: seconds at paper size, off the event loop so that the
            # connection keeps being served meanwhile.
            cache[(run, round)] = await anyio.to_thread.run_sync(_index, samples, ctx.settings.expander.near_duplicate)
            while len(cache) > 4:
                cache.popitem(last=False)
    return cache[(run, round)]


def _index(samples: list[Sample], threshold: float) -> NearDuplicateIndex:
    index = NearDuplicateIndex(threshold)
    for sample in samples:
        index.add(sample)
    return index
