"""A seeded synthetic tool world, so the whole loop runs offline.

Tools across a few domains (typed, enum, optional, array and nested-object parameters) and
samples of every BFCL AST category: simple, multiple (one call, several tools offered),
parallel (several calls of one tool), parallel_multiple, irrelevance (no fitting tool). Every
argument value is written into the user's request, so a label can be checked for grounding.

:func:`build` makes a train set (with controlled label noise, recorded in ``meta["noise"]``
with the clean label in ``meta["clean_label"]``) and a clean held-out test set.
:meth:`World.similar` makes new samples exercising the same capability as a given one — the
offline expander.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from looptool.data.samples import Lineage, Message, Sample, ToolCall, sample_id
from looptool.data.worlds.noise import LABEL_NOISE
from looptool.data.worlds.tools import CATALOGUES, TOOLS, Tool

CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance")

_IRRELEVANT_ASKS = [
    "Tell me a joke about penguins.",
    "Who wrote the novel Middlemarch?",
    "Translate 'good morning' into Italian.",
    "What is the capital of Mongolia?",
    "Summarise the plot of Hamlet in one sentence.",
]
DEFAULT_MIX = {"simple": 0.3, "multiple": 0.25, "parallel": 0.2, "parallel_multiple": 0.15, "irrelevance": 0.1}


def _render(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


class World:
    """A tool catalogue plus seeded sample makers.

    ``prior_calls`` is the share of samples whose request follows an earlier, answered tool call
    (a multi-turn conversation: user, assistant call, tool result, assistant, user)."""

    def __init__(self, seed: int = 0, tools: tuple[Tool, ...] = TOOLS, prior_calls: float = 0.0) -> None:
        self.seed = seed
        self.tools = tools
        self.prior_calls = prior_calls

    @classmethod
    def of(cls, catalogue: str, seed: int = 0, held_out: Iterable[str] = (), prior_calls: float = 0.0) -> World:
        """The world of a named catalogue without the tools of the ``held_out`` domains."""
        excluded = set(held_out)
        return cls(seed, tuple(t for t in CATALOGUES[catalogue] if t.domain not in excluded), prior_calls)

    def _call(self, tool: Tool, rng: random.Random) -> tuple[ToolCall, str]:
        arguments: dict[str, Any] = {}
        phrases = []
        for param in tool.params:
            if not param.required and rng.random() < 0.5:
                continue
            value = param.draw(rng)
            arguments[param.name] = value
            phrases.append(param.phrase.format(v=_render(value)))
        return ToolCall(name=tool.name, arguments=arguments), f"{tool.ask} {' '.join(phrases)}"

    def _distractors(self, tool: Tool, rng: random.Random, n: int) -> list[Tool]:
        others = [t for t in self.tools if t.name != tool.name]
        return rng.sample(others, n)

    def make(self, category: str, rng: random.Random, tool: Tool | None = None) -> Sample:
        """One clean sample of ``category`` (optionally around a given tool)."""
        tool = tool or rng.choice(self.tools)
        if category == "simple":
            call, text = self._call(tool, rng)
            offered, calls, request = [tool], [call], text + "."
        elif category == "multiple":
            call, text = self._call(tool, rng)
            offered = [tool, *self._distractors(tool, rng, rng.randint(1, 3))]
            rng.shuffle(offered)
            calls, request = [call], text + "."
        elif category == "parallel":
            made = [self._call(tool, rng) for _ in range(rng.randint(2, 3))]
            offered, calls = [tool], [c for c, _ in made]
            request = ". Also, ".join(t for _, t in made) + "."
        elif category == "parallel_multiple":
            second = self._distractors(tool, rng, 1)[0]
            made = [self._call(tool, rng), self._call(second, rng)]
            offered = [tool, second, *self._distractors(tool, rng, 1)]
            offered = list({t.name: t for t in offered}.values())
            rng.shuffle(offered)
            calls, request = [c for c, _ in made], ". Also, ".join(t for _, t in made) + "."
        elif category == "irrelevance":
            # A request for something no offered tool does: another domain's tools are offered.
            _, text = self._call(tool, rng)
            unrelated = [t for t in self.tools if t.domain != tool.domain]
            offered, calls = rng.sample(unrelated, rng.randint(1, 2)), []
            request = text + "." if rng.random() < 0.8 else rng.choice(_IRRELEVANT_ASKS)
        else:
            raise ValueError(f"unknown category {category!r}; known: {CATEGORIES}")
        tools = [t.spec() for t in offered]
        messages = [Message(role="user", content=request)]
        if self.prior_calls and rng.random() < self.prior_calls:
            messages = [*self._earlier_call(offered, rng), *messages]
        elif rng.random() < 0.25 and category != "irrelevance":
            # Multi-turn variant: the request arrives after a greeting exchange.
            messages = [
                Message(role="user", content="Hi, I need some help."),
                Message(role="assistant", content="Sure, what can I do for you?"),
                *messages,
            ]
        return Sample(
            id=sample_id(tools, messages, calls),
            tools=tools,
            messages=messages,
            label=calls,
            category=category,
            meta={"world_seed": self.seed, "domain": tool.domain},
            lineage=Lineage(origin="seed", source="world"),
        )

    def _earlier_call(self, offered: list[Tool], rng: random.Random) -> list[Message]:
        """An earlier request to one of the offered tools, its call, the result and a reply."""
        call, text = self._call(rng.choice(offered), rng)
        call_id = f"call_{rng.randrange(10**6):06d}"
        return [
            Message(role="user", content=text + "."),
            Message(role="assistant", tool_calls=[call]),
            Message(role="tool", name=call.name, tool_call_id=call_id, content='{"status": "ok"}'),
            Message(role="assistant", content="Done."),
        ]

    def similar(self, seed: Sample, k: int, rng: random.Random) -> list[Sample]:
        """``k`` new samples exercising the seed's capability: same category, same main tool,
        fresh values (the offline stand-in for an LLM expander)."""
        known = {tool.name: tool for tool in self.tools}
        main = next((known[c.name] for c in seed.label if c.name in known), None)
        if main is None:
            main = next((known[t.function.name] for t in seed.tools if t.function.name in known), None)
        category = seed.category if seed.category in CATEGORIES else "simple"
        return [self.make(category, rng, tool=main) for _ in range(k)]


class WorldData(msgspec.Struct):
    train: list[Sample]
    test: list[Sample]


def build(
    n_train: int,
    n_test: int,
    seed: int = 0,
    noise_rate: float = 0.0,
    mix: dict[str, float] | None = None,
    *,
    catalogue: str = "core",
    noise_rates: dict[str, float] | None = None,
    held_out_domains: tuple[str, ...] = (),
    unseen_share: float = 0.0,
    prior_calls: float = 0.0,
    exclude: frozenset[str] = frozenset(),
) -> WorldData:
    """A train set with label noise and a clean, disjoint test set.

    ``noise_rate`` corrupts that share of labels, the kinds of :data:`LABEL_NOISE` alike;
    ``noise_rates`` instead gives each kind its own rate. Tools of ``held_out_domains`` never
    appear in the train set; ``unseen_share`` of the test set is built around them. Samples
    whose id is in ``exclude`` (another split's) are never drawn."""
    train_world = World.of(catalogue, seed, held_out_domains, prior_calls)
    test_world = World.of(catalogue, seed, (), prior_calls)
    unseen_tools = [t for t in test_world.tools if t.domain in held_out_domains]
    if held_out_domains and not unseen_tools:
        raise ValueError(f"no tools in the held-out domains {held_out_domains} of catalogue {catalogue!r}")
    rng = random.Random(seed)
    mix = mix or DEFAULT_MIX
    categories, weights = list(mix), list(mix.values())

    def draw(n: int, seen: set[str], test: bool) -> list[Sample]:
        samples: list[Sample] = []
        attempts = 0
        while len(samples) < n:
            attempts += 1
            if attempts > n * 50:
                raise ValueError(f"cannot draw {n} distinct samples from the world (got {len(samples)})")
            unseen = test and unseen_tools and rng.random() < unseen_share
            world = test_world if unseen else train_world
            sample = world.make(rng.choices(categories, weights)[0], rng, rng.choice(unseen_tools) if unseen else None)
            if sample.id not in seen:  # distinct, and the test split never overlaps train
                seen.add(sample.id)
                if unseen:
                    sample.meta["unseen_tool"] = True
                samples.append(sample)
        return samples

    seen: set[str] = set(exclude)
    train = draw(n_train, seen, test=False)
    test = draw(n_test, seen, test=True)
    rates = noise_rates if noise_rates is not None else dict.fromkeys(LABEL_NOISE, noise_rate / len(LABEL_NOISE))
    unknown = set(rates) - set(LABEL_NOISE)
    if unknown:
        raise ValueError(f"unknown label noise kinds {sorted(unknown)}; known: {sorted(LABEL_NOISE)}")
    for sample in train:
        kind = _noise_kind(rates, rng) if sample.label else None
        if kind is None:
            continue
        corrupted = LABEL_NOISE[kind](sample.label, sample.tools, rng)
        if corrupted is not None and corrupted != sample.label:
            sample.meta["noise"] = kind
            sample.meta["clean_label"] = msgspec.to_builtins(sample.label)
            sample.label = corrupted
            sample.id = sample_id(sample.tools, sample.messages, sample.label)
    for category in CATEGORIES:
        for index, sample in enumerate(s for s in test if s.category == category):
            sample.meta["bfcl_id"] = f"{category}_{index}"
    return WorldData(train=train, test=test)


def clean_label(sample: Sample) -> list[ToolCall] | None:
    """The label :func:`build` recorded before it corrupted this sample's (None: never corrupted)."""
    clean = sample.meta.get("clean_label")
    return None if clean is None else msgspec.convert(clean, list[ToolCall])


def label_is_noisy(sample: Sample) -> bool:
    """Whether the sample's label still differs from the clean one the world recorded (a judge
    may have fixed it since)."""
    clean = clean_label(sample)
    return clean is not None and sample.label != clean


def with_clean_label(sample: Sample) -> Sample:
    """The sample as a perfect judge would leave it."""
    clean = clean_label(sample)
    return sample if clean is None else msgspec.structs.replace(sample, label=clean)


def _noise_kind(rates: dict[str, float], rng: random.Random) -> str | None:
    """Which kind of noise hits a label (None: it stays clean): kind k with probability rates[k]."""
    draw = rng.random()
    for kind, rate in rates.items():
        if draw < rate:
            return kind
        draw -= rate
    return None


def write(data: WorldData, out_dir: str | Path) -> dict[str, Path]:
    """``train.jsonl`` (canonical samples) and the test split as BFCL files per category."""
    from looptool.data.formats import export_jsonl, write_samples

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / "train.jsonl"}
    write_samples(data.train, paths["train"])
    for category in CATEGORIES:
        chosen = [s for s in data.test if s.category == category]
        if chosen:
            paths[category] = out / "test" / f"BFCL_v4_{category}.json"
            paths[category].parent.mkdir(exist_ok=True)
            export_jsonl(chosen, paths[category], "bfcl")
    return paths
