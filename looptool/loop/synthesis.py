"""Seed data from a team's own tools: role-play synthesis, verified in stages.

For each sample: a category and the tools to offer are drawn (the seed decides), the generator
plays the **user** (a request of that category, in a persona's words; prompt
``prompts/synthesize-user-v1.md``) and then the **assistant** (the request with the tools offered
natively; its calls are the label). Then the stages, each counted by reason when it rejects:

1. **format** — the label fits the category (no call for irrelevance or a missing parameter,
   several for parallel, the target tools called) and passes its tools' schemas and the grounding
   rule (every value taken from the conversation), the expander's own checks. A multi-turn
   sample is built in two exchanges: the first request, the assistant's calls (checked the same
   way) run on the real tools, their results, the user's follow-up (prompt
   ``prompts/synthesize-followup-v1.md``) — the label is the answer to that;
2. **execution** — where the source can run calls (an MCP server), every call runs; an error
   result rejects the sample, the results are kept in ``meta["synthesis"]["observations"]``;
3. **semantics** — a judge endpoint votes whether the calls answer the request (prompt
   ``prompts/synthesize-judge-v1.md``; ``judge.votes`` votes at ``judge.temperature``, a verdict
   needs ``judge.quorum``; a reply that does not fit the schema is retried ``judge.reply_retries``
   times, then a missing vote) — run when a judge is given;
4. **de-duplication** — exact and near-duplicate samples (MinHash, as the expander) are dropped;
5. **contamination** — a sample that leaks into an eval set (``looptool lint``'s test: its
   request matches an eval query, or it shares a tool and an n-gram with one) is dropped.

Stages 1–3 are one attempt's (:func:`attempt`); 4 and 5 look at every attempt together, in
attempt order (:func:`settle`), so that the synthesizer service's replicas, taking attempts in
any order, settle a job as one process would.

Every kept sample carries its lineage (origin ``synthesis``, the source, the tools, each stage's
verdict, the judge's votes) in ``meta["synthesis"]``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

import msgspec

from looptool.data.dedup import NearDuplicateIndex
from looptool.data.lint import contamination
from looptool.data.samples import Lineage, Message, Sample, ToolCall, ToolSpec, sample_id
from looptool.data.toolsources import CallOutcome
from looptool.kernel.events import DeadLetter, Event, event_tag
from looptool.kernel.settings import SettingsError
from looptool.llm.client import ModelClient, ModelRequestError
from looptool.loop.events import (
    SynthesisAttempt,
    SynthesisFinished,
    SynthesisJob,
    SynthesisRequested,
    SynthesisResult,
    SynthesisTask,
)
from looptool.loop.expansion import rejection_reason, seed_rng
from looptool.loop.judging import data_block, load_prompt
from looptool.loop.settings import JudgeSettings, Settings, SynthesisSettings

SERVICE = "synthesizer"  # the service whose dead letters settle attempts
CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance", "missing_parameter", "multi_turn")
Executor = Callable[[ToolCall], Awaitable[CallOutcome]]


class Synthesized(msgspec.Struct):
    samples: list[Sample]
    rejected: dict[str, int]  # "stage: reason" -> attempts
    attempted: int
    rejects: list[dict[str, Any]]  # each rejected attempt: category, stage, reason, request, calls

    def summary(self) -> str:
        reasons = _listed(sorted(self.rejected.items()))
        return (
            f"{self.attempted} attempted: {len(self.samples)} kept, {self.attempted - len(self.samples)} rejected"
            + (f" ({reasons})" if reasons else "")
        )


class SemanticReply(msgspec.Struct, forbid_unknown_fields=True):
    verdict: Literal["answers", "does_not_answer"]
    analysis: str


_semantic_decoder = msgspec.json.Decoder(SemanticReply)


class Judge(msgspec.Struct):
    """The semantic stage's judge: an endpoint's client and model, and the judge settings."""

    client: Any  # ModelClient
    model: str
    settings: JudgeSettings


class _Rejected(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        self.stage, self.reason = stage, reason


async def synthesize(
    tools: list[ToolSpec],
    client: ModelClient,
    model: str,
    settings: SynthesisSettings,
    source: str,
    execute: Executor | None = None,
    judge: Judge | None = None,
    evals: dict[str, list[Sample]] | None = None,
) -> Synthesized:
    """``settings.count`` attempts at samples over ``tools``, the generator ``model`` playing the
    user and the assistant; ``execute`` runs a call on the real tool (None: no execution stage);
    ``judge`` votes on whether the calls answer the request (None: no semantic stage); ``evals``
    are the sets a sample must not leak into (None: no contamination stage). In process, one
    attempt after another: the synthesizer service runs the same attempts on the bus."""
    attempts = [
        await attempt(index, tools, client, model, settings, source, execute, judge) for index in range(settings.count)
    ]
    return settle(attempts, settings.count, settings.near_duplicate, evals)


async def attempt(
    index: int,
    tools: list[ToolSpec],
    client: ModelClient,
    model: str,
    settings: SynthesisSettings,
    source: str,
    execute: Executor | None = None,
    judge: Judge | None = None,
) -> SynthesisAttempt:
    """Attempt ``index`` (the seed and the index decide its category, tools and persona): the
    role-play and the format, execution and semantic stages. De-duplication and contamination
    look at every attempt together (:func:`settle`)."""
    if not tools:
        raise ValueError("no tools to synthesize for")
    weights = category_weights(settings)
    rng = seed_rng(settings.seed, index)
    category = rng.choices(list(weights), list(weights.values()))[0]
    if category == "parallel_multiple" and len(tools) < 2:
        category = "parallel"
    if category == "multi_turn" and (execute is None or not settings.execute):
        category = "simple"  # a multi-turn sample's observations come from running the calls
    targets, offered = _draw(tools, category, settings.distractors, rng)
    persona = rng.choice(settings.personas)
    request, calls = "", list[ToolCall]()
    try:
        request = await _user_request(client, model, settings, offered, targets, category, persona, index)
        messages = [Message(role="user", content=request)]
        if category == "multi_turn":
            assert execute is not None
            messages = await _first_exchange(client, model, settings, offered, targets, messages, execute, persona)
        sample, calls = await _answer(client, model, settings, offered, messages)
        _check_format(sample, category, targets)
        observations = await _executed(execute, calls) if execute is not None and settings.execute else None
        votes = await _semantics(judge, sample) if judge is not None else None
    except (_Rejected, ModelRequestError) as exc:  # a request the server refuses costs that attempt only
        why = exc if isinstance(exc, _Rejected) else _Rejected("model", f"a request refused: {str(exc)[:120]}")
        return SynthesisAttempt(
            attempt=index, category=category, stage=why.stage, reason=why.reason, request=request, calls=calls
        )
    stages = {"format": "pass", "execution": "pass" if observations is not None else "not run"}
    stages["semantics"] = "pass" if votes is not None else "not checked"
    provenance: dict[str, Any] = {
        "source": source,
        "category": category,
        "tools": [t.function.name for t in offered],
        "persona": persona,
        "stages": stages,
    }
    if observations is not None:
        provenance["observations"] = observations
    if votes is not None:
        provenance["votes"] = votes
    sample = msgspec.structs.replace(
        sample,
        category=category,
        lineage=Lineage(origin="synthesis", source=source, history=[f"attempt {index}: {category}"]),
        meta={"synthesis": provenance},
    )
    return SynthesisAttempt(attempt=index, category=category, sample=sample, request=request, calls=calls)


def category_weights(settings: SynthesisSettings) -> dict[str, float]:
    """The categories to draw from, by share; none is a settings error (refused at a start)."""
    weights = {c: w for c, w in settings.categories.items() if c in CATEGORIES and w > 0}
    if not weights:
        raise SettingsError(f"synthesis.categories: give a positive share to one of {', '.join(CATEGORIES)}")
    return weights


def check_settings(settings: SynthesisSettings) -> None:
    """At the synthesizer's start: settings no attempt could use are refused there."""
    category_weights(settings)


def settle(
    attempts: Iterable[SynthesisAttempt],
    count: int,
    near_duplicate: float,
    evals: dict[str, list[Sample]] | None = None,
) -> Synthesized:
    """The outcome of every attempt, in attempt order (so that replicas finishing in any order
    settle alike): a verified sample is kept unless it repeats an earlier one, exactly or nearly
    (``dedup``), or leaks into an eval set (``contamination``, lint's test)."""
    ordered = sorted(attempts, key=lambda a: a.attempt)
    verified = [a.sample for a in ordered if a.sample is not None]
    dirty = set(contamination(verified, evals).contaminated_ids) if evals else set()
    kept: list[Sample] = []
    rejected: Counter[str] = Counter()
    rejects: list[dict[str, Any]] = []
    index = NearDuplicateIndex(near_duplicate)
    seen: set[str] = set()
    for one in ordered:
        sample = one.sample
        if sample is not None and (sample.id in seen or index.is_duplicate(sample)):
            one, sample = msgspec.structs.replace(one, sample=None, stage="dedup", reason="duplicate"), None
        elif sample is not None and sample.id in dirty:
            one, sample = (
                msgspec.structs.replace(one, sample=None, stage="contamination", reason="overlaps an eval set"),
                None,
            )
        if sample is None:
            rejected[f"{one.stage}: {one.reason}"] += 1
            rejects.append({k: v for k, v in msgspec.to_builtins(one).items() if k != "sample"})
            continue
        seen.add(sample.id)
        index.add(sample)
        sample.meta["synthesis"]["stages"] |= {"dedup": "pass", "contamination": "pass" if evals else "not checked"}
        kept.append(sample)
    return Synthesized(kept, dict(rejected), count, rejects)


def _draw(tools: list[ToolSpec], category: str, distractors: int, rng: Any) -> tuple[list[ToolSpec], list[ToolSpec]]:
    """(the tools the request is about, the tools offered), in a seeded order."""
    if category == "irrelevance":
        return [], rng.sample(tools, min(len(tools), 1 + distractors))
    targets = rng.sample(tools, 2 if category == "parallel_multiple" else 1)
    if category in ("simple", "parallel", "missing_parameter", "multi_turn"):
        return targets, targets
    others = [t for t in tools if t not in targets]
    offered = targets + rng.sample(others, min(len(others), distractors))
    rng.shuffle(offered)
    return targets, offered


async def _user_request(
    client: ModelClient,
    model: str,
    settings: SynthesisSettings,
    offered: list[ToolSpec],
    targets: list[ToolSpec],
    category: str,
    persona: str,
    attempt: int,
) -> str:
    data = {
        "tools": [msgspec.to_builtins(t) for t in offered],
        "persona": persona,
        "kind": category,
        "target": [t.function.name for t in targets],
    }
    return await _user_turn(
        client, model, settings, settings.prompt, data, "empty request", seed=settings.seed * 100_003 + attempt
    )


async def _user_turn(
    client: ModelClient,
    model: str,
    settings: SynthesisSettings,
    prompt: str,
    data: dict[str, Any],
    empty: str,
    seed: int | None = None,
) -> str:
    """The generator playing the user: prompt ``prompt`` with ``data``, the reply's text as the
    user's message (a reply with none rejects the attempt, ``empty`` saying which)."""
    request: dict[str, Any] = {
        "messages": [{"role": "user", "content": load_prompt(prompt).safe_substitute(data=data_block(data))}],
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
    }
    if seed is not None:
        request["seed"] = seed
    response = await client.chat(model, **request)
    text = (response.choices[0].message.content or "").strip().strip('"').strip()
    if not text:
        raise _Rejected("user", empty)
    return text


async def _first_exchange(
    client: ModelClient,
    model: str,
    settings: SynthesisSettings,
    offered: list[ToolSpec],
    targets: list[ToolSpec],
    messages: list[Message],
    execute: Executor,
    persona: str,
) -> list[Message]:
    """A multi-turn sample's earlier turns: the first request, the assistant's calls, what the
    real tools returned, and the user's follow-up (prompt ``synthesize-followup-v1``)."""
    first, calls = await _answer(client, model, settings, offered, messages)
    try:
        _check_format(first, "simple", targets)
    except _Rejected as exc:
        raise _Rejected("format", f"first turn: {exc.reason}") from None
    results = await _executed(execute, calls)
    messages = [*messages, Message(role="assistant", tool_calls=calls)]
    messages += [Message(role="tool", content=result) for result in results]
    data = {
        "tools": [msgspec.to_builtins(t) for t in offered],
        "persona": persona,
        "target": [t.function.name for t in targets],
        "conversation": [
            {"role": m.role, "content": m.content, "calls": [msgspec.to_builtins(c) for c in m.tool_calls]}
            for m in messages
        ],
    }
    follow_up = await _user_turn(client, model, settings, "synthesize-followup-v1", data, "empty follow-up")
    return [*messages, Message(role="user", content=follow_up)]


async def _answer(
    client: ModelClient, model: str, settings: SynthesisSettings, offered: list[ToolSpec], messages: list[Message]
) -> tuple[Sample, list[ToolCall]]:
    prediction = await client.predict(
        Sample(id="s-synthesis", tools=offered, messages=messages), model, max_tokens=settings.max_tokens
    )
    if prediction.error_type is not None:
        raise _Rejected("assistant", "unparseable reply")
    label = prediction.calls
    return Sample(id=sample_id(offered, messages, label), tools=offered, messages=messages, label=label), label


def _check_format(sample: Sample, category: str, targets: list[ToolSpec]) -> None:
    names = [call.name for call in sample.label]
    wanted = {t.function.name for t in targets}
    fits = {
        "irrelevance": not names,
        "simple": len(names) == 1 and set(names) == wanted,
        "multiple": len(names) == 1 and set(names) == wanted,
        "parallel": len(names) >= 2 and set(names) == wanted,
        "parallel_multiple": len(names) >= 2 and set(names) == wanted,
        "missing_parameter": not names,  # the assistant asks for what is missing
        "multi_turn": len(names) == 1 and set(names) == wanted,
    }[category]
    if not fits:
        raise _Rejected("format", f"calls {names or 'none'} do not fit {category}")
    reason = rejection_reason(sample)  # schema, unknown function, ungrounded values
    if reason:
        raise _Rejected("format", reason)


async def _semantics(judge: Judge, sample: Sample) -> list[str | None]:
    """The judge's votes; rejects the sample unless ``quorum`` of them say the calls answer."""
    settings = judge.settings
    payload = {
        "tools": [msgspec.to_builtins(t.function) for t in sample.tools],
        "request": sample.messages[-1].content,
        "calls": [{"name": c.name, "arguments": c.arguments} for c in sample.label],
    }
    request = {
        "messages": [
            {"role": "user", "content": load_prompt("synthesize-judge-v1").substitute(data=data_block(payload))}
        ],
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "semantic_reply", "schema": msgspec.json.schema(SemanticReply), "strict": True},
        },
    }
    votes: list[str | None] = []
    for index in range(settings.votes):
        vote = None
        for retry in range(1 + settings.reply_retries):
            response = await judge.client.chat(judge.model, **request, seed=index * 1000 + retry)
            try:
                vote = _semantic_decoder.decode(response.choices[0].message.content or "").verdict
                break
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError):
                continue
        votes.append(vote)
    answers = votes.count("answers")
    if answers < settings.quorum:
        refusals = votes.count("does_not_answer")
        reason = "does not answer the request" if refusals >= settings.quorum else "no quorum"
        raise _Rejected("semantics", reason)
    return votes


async def _executed(execute: Executor, calls: list[ToolCall]) -> list[str]:
    observations = []
    for call in calls:
        try:
            outcome = await execute(call)
        except Exception as exc:  # the tool's server failed the request itself
            raise _Rejected("execution", f"{call.name} failed: {type(exc).__name__}") from None
        if not outcome.ok:
            raise _Rejected("execution", f"{call.name} returned an error")
        observations.append(outcome.text)
    return observations


def decontamination_sets(settings: Settings) -> dict[str, list[Sample]] | None:
    """The evaluator's sets a synthesized sample must not leak into (None: no such stage)."""
    from looptool.loop.evaluation import load_eval_sets

    if not settings.synthesis.decontaminate or not settings.evaluator.sets:
        return None
    return {"evaluator.sets": [item for item in load_eval_sets(settings.evaluator.sets) if isinstance(item, Sample)]}


def settles_attempt(letter: DeadLetter) -> bool:
    """Whether a dead letter is the synthesizer giving up on an attempt (its outcome)."""
    return letter.service == SERVICE and letter.stage == event_tag(SynthesisTask)


class JobLedger:
    """A synthesis job folded from its events: the request, one outcome per attempt (results,
    and the dead letters of attempts whose work failed for good), the finish. What the
    synthesizer's replicas settle from and what ``looptool synthesize`` shows."""

    def __init__(self, job: str) -> None:
        self.job = job
        self.request: SynthesisJob | None = None
        self.count: int | None = None
        self.outcomes: dict[int, SynthesisAttempt] = {}
        self.repeats = 0  # a second outcome for an attempt: ignored, the first stands
        self.unrun_calls = 0  # verified samples whose calls did not run (no execution stage)
        self.finished: SynthesisFinished | None = None

    def apply(self, event: Event) -> None:
        match event:
            case SynthesisRequested(job=job):
                self.request, self.count = job, job.count
            case SynthesisResult(count=count, outcome=outcome):
                self._outcome(count, outcome)
            case DeadLetter() if settles_attempt(event):
                try:
                    task = msgspec.json.decode(event.data, type=SynthesisTask)
                except msgspec.MsgspecError:  # a poison task names no attempt: nothing to settle
                    return
                failed = SynthesisAttempt(attempt=task.attempt, category="", stage="error", reason=event.error[:200])
                self._outcome(task.job.count, failed)
            case SynthesisFinished():
                self.finished = event
                self.outcomes.clear()  # settled: only the counts are needed from now on

    def _outcome(self, count: int, outcome: SynthesisAttempt) -> None:
        if self.finished is not None:
            return
        self.count = count
        if outcome.attempt in self.outcomes:
            self.repeats += 1
        elif 0 <= outcome.attempt < count:
            self.outcomes[outcome.attempt] = outcome
            if outcome.sample is not None and _stage(outcome.sample, "execution") != "pass":
                self.unrun_calls += 1

    def complete(self) -> bool:
        return self.finished is None and self.count is not None and len(self.outcomes) == self.count

    def progress(self) -> Counter[str]:
        """Outcomes so far: ``verified`` (before de-duplication) or ``stage: reason``."""
        return Counter("verified" if o.sample is not None else f"{o.stage}: {o.reason}" for o in self.outcomes.values())

    def status(self) -> str:
        if self.finished is not None:
            done = self.finished
            reasons = _listed(sorted(done.rejected.items()))
            return f"{self.job}: finished, {done.attempted} attempted: {done.kept} kept" + (
                f", rejected {reasons}" if reasons else ""
            )
        if self.count is None:
            return f"{self.job}: waiting for the synthesizer"
        progress = self.progress()
        verified = progress.pop("verified", 0)
        rejected = _listed(progress.most_common())
        return f"{self.job}: {len(self.outcomes)}/{self.count} attempted, {verified} verified" + (
            f"; rejected {rejected}" if rejected else ""
        )


def _stage(sample: Sample, stage: str) -> str | None:
    stages = sample.meta.get("synthesis", {}).get("stages", {})
    return stages.get(stage) if isinstance(stages, dict) else None


def _listed(counts: Iterable[tuple[str, int]]) -> str:
    """Rejection reasons with their counts, as the summaries print them."""
    return ", ".join(f"{reason} {n}" for reason, n in counts)
