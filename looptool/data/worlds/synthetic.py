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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from looptool.data.samples import FunctionSpec, Lineage, Message, Sample, ToolCall, ToolSpec, sample_id
from looptool.data.worlds.noise import LABEL_NOISE

CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance")

CITIES = [
    "Oslo",
    "Lima",
    "Nairobi",
    "Osaka",
    "Denver",
    "Porto",
    "Hanoi",
    "Quito",
    "Tunis",
    "Perth",
    "Bergen",
    "Austin",
    "Cusco",
    "Dakar",
    "Kyoto",
    "Seville",
]
NAMES = ["Ana Silva", "Kenji Mori", "Lea Novak", "Omar Haddad", "Sara Lind", "Tom Baker", "Ivy Chen", "Raj Patel"]
SYMBOLS = ["AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "GOOG", "ORCL", "INTC"]
ITEMS = [
    "desk lamp",
    "running shoes",
    "coffee grinder",
    "yoga mat",
    "rain jacket",
    "phone case",
    "backpack",
    "water bottle",
]
DATES = [f"2026-{m:02d}-{d:02d}" for m in range(1, 13) for d in (3, 9, 14, 21, 27)]
TOPICS = ["budget review", "design sync", "hiring plan", "quarterly report", "team lunch", "launch retro"]


@dataclass(frozen=True)
class Param:
    name: str
    schema: dict[str, Any]
    draw: Callable[[random.Random], Any]
    phrase: str  # how the request says it; {v} is the value
    required: bool = True


@dataclass(frozen=True)
class Tool:
    domain: str
    name: str
    description: str
    ask: str  # the request's opening, e.g. "What's the weather"
    params: tuple[Param, ...] = field(default_factory=tuple)

    def spec(self) -> ToolSpec:
        properties = {p.name: p.schema for p in self.params}
        required = [p.name for p in self.params if p.required]
        return ToolSpec(
            function=FunctionSpec(
                name=self.name,
                description=self.description,
                parameters={"type": "object", "properties": properties, "required": required},
            )
        )


def _s(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _choice(values: list[Any]) -> Callable[[random.Random], Any]:
    return lambda rng: rng.choice(values)


TOOLS: tuple[Tool, ...] = (
    Tool(
        "weather",
        "get_current_weather",
        "Current weather for a city.",
        "What's the weather",
        (
            Param("city", _s("City name"), _choice(CITIES), "in {v}"),
            Param(
                "unit",
                _s("Temperature unit", enum=["celsius", "fahrenheit"]),
                _choice(["celsius", "fahrenheit"]),
                "in {v}",
                required=False,
            ),
        ),
    ),
    Tool(
        "weather",
        "get_forecast",
        "Daily forecast for a city.",
        "Give me the forecast",
        (
            Param("city", _s("City name"), _choice(CITIES), "for {v}"),
            Param(
                "days",
                {"type": "integer", "description": "Number of days", "minimum": 1, "maximum": 14},
                lambda r: r.randint(2, 14),
                "for the next {v} days",
            ),
        ),
    ),
    Tool(
        "travel",
        "search_flights",
        "Search flights between two cities.",
        "Find flights",
        (
            Param("origin", _s("Departure city"), _choice(CITIES), "from {v}"),
            Param("destination", _s("Arrival city"), _choice(CITIES), "to {v}"),
            Param("date", _s("Departure date, YYYY-MM-DD"), _choice(DATES), "on {v}"),
            Param(
                "cabin",
                _s("Cabin class", enum=["economy", "premium", "business"]),
                _choice(["economy", "premium", "business"]),
                "in {v} class",
                required=False,
            ),
        ),
    ),
    Tool(
        "travel",
        "book_hotel",
        "Book a hotel room.",
        "Book a hotel",
        (
            Param("city", _s("City"), _choice(CITIES), "in {v}"),
            Param(
                "nights",
                {"type": "integer", "description": "Number of nights"},
                lambda r: r.randint(1, 9),
                "for {v} nights",
            ),
            Param(
                "guest",
                {
                    "type": "object",
                    "description": "Main guest",
                    "properties": {"name": _s("Full name"), "age": {"type": "integer"}},
                    "required": ["name"],
                },
                lambda r: {"name": r.choice(NAMES), "age": r.randint(18, 80)},
                "for guest {v}",
            ),
        ),
    ),
    Tool(
        "finance",
        "get_stock_prices",
        "Latest prices for stock symbols.",
        "Get the stock prices",
        (
            Param(
                "symbols",
                {"type": "array", "items": {"type": "string"}, "description": "Ticker symbols"},
                lambda r: r.sample(SYMBOLS, r.randint(1, 3)),
                "of {v}",
            ),
        ),
    ),
    Tool(
        "finance",
        "convert_currency",
        "Convert an amount between currencies.",
        "Convert",
        (
            Param(
                "amount",
                {"type": "number", "description": "Amount to convert"},
                lambda r: round(r.uniform(5, 5000), 2),
                "{v}",
            ),
            Param(
                "source",
                _s("Currency code", enum=["USD", "EUR", "JPY", "NOK", "GBP"]),
                _choice(["USD", "EUR", "JPY", "NOK", "GBP"]),
                "from {v}",
            ),
            Param(
                "target",
                _s("Currency code", enum=["USD", "EUR", "JPY", "NOK", "GBP"]),
                _choice(["USD", "EUR", "JPY", "NOK", "GBP"]),
                "to {v}",
            ),
        ),
    ),
    Tool(
        "calendar",
        "create_event",
        "Create a calendar event.",
        "Schedule",
        (
            Param("title", _s("Event title"), _choice(TOPICS), "a {v}"),
            Param("date", _s("Date, YYYY-MM-DD"), _choice(DATES), "on {v}"),
            Param(
                "duration_minutes",
                {"type": "integer", "description": "Length in minutes"},
                _choice([15, 30, 45, 60, 90]),
                "for {v} minutes",
                required=False,
            ),
            Param(
                "attendees",
                {"type": "array", "items": {"type": "string"}, "description": "People invited"},
                lambda r: r.sample(NAMES, r.randint(1, 3)),
                "with {v}",
                required=False,
            ),
        ),
    ),
    Tool(
        "shopping",
        "search_products",
        "Search the catalogue.",
        "Search for",
        (
            Param("query", _s("What to look for"), _choice(ITEMS), "{v}"),
            Param(
                "max_price",
                {"type": "number", "description": "Price ceiling"},
                lambda r: float(r.choice([20, 35, 50, 80, 120])),
                "under {v} dollars",
                required=False,
            ),
            Param(
                "in_stock",
                {"type": "boolean", "description": "Only items in stock"},
                _choice([True, False]),
                "with in-stock only set to {v}",
                required=False,
            ),
        ),
    ),
    Tool(
        "math",
        "calculate_compound_interest",
        "Compound interest on a principal.",
        "Calculate the compound interest",
        (
            Param(
                "principal",
                {"type": "number", "description": "Starting amount"},
                lambda r: float(r.choice([1000, 2500, 5000, 12000])),
                "on {v}",
            ),
            Param(
                "rate",
                {"type": "number", "description": "Yearly rate, e.g. 0.05"},
                _choice([0.02, 0.035, 0.05, 0.07]),
                "at a rate of {v}",
            ),
            Param("years", {"type": "integer", "description": "Years"}, lambda r: r.randint(1, 30), "over {v} years"),
        ),
    ),
)

_BY_NAME = {tool.name: tool for tool in TOOLS}
_IRRELEVANT_ASKS = [
    "Tell me a joke about penguins.",
    "Who wrote the novel Middlemarch?",
    "Translate 'good morning' into Italian.",
    "What is the capital of Mongolia?",
    "Summarise the plot of Hamlet in one sentence.",
]


def _render(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


class World:
    """The tool catalogue plus seeded sample makers."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.tools = TOOLS

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
        if rng.random() < 0.25 and category != "irrelevance":
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

    def similar(self, seed: Sample, k: int, rng: random.Random) -> list[Sample]:
        """``k`` new samples exercising the seed's capability: same category, same main tool,
        fresh values (the offline stand-in for an LLM expander)."""
        main = next((_BY_NAME[c.name] for c in seed.label if c.name in _BY_NAME), None)
        if main is None:
            main = next((_BY_NAME[t.function.name] for t in seed.tools if t.function.name in _BY_NAME), None)
        category = seed.category if seed.category in CATEGORIES else "simple"
        return [self.make(category, rng, tool=main) for _ in range(k)]


class WorldData(msgspec.Struct):
    train: list[Sample]
    test: list[Sample]


def build(
    n_train: int, n_test: int, seed: int = 0, noise_rate: float = 0.0, mix: dict[str, float] | None = None
) -> WorldData:
    """A train set with ``noise_rate`` of labels corrupted, and a clean, disjoint test set."""
    world = World(seed)
    rng = random.Random(seed)
    mix = mix or {"simple": 0.3, "multiple": 0.25, "parallel": 0.2, "parallel_multiple": 0.15, "irrelevance": 0.1}
    categories, weights = list(mix), list(mix.values())

    def draw(n: int, seen: set[str]) -> list[Sample]:
        samples: list[Sample] = []
        attempts = 0
        while len(samples) < n:
            attempts += 1
            if attempts > n * 50:
                raise ValueError(f"cannot draw {n} distinct samples from the world (got {len(samples)})")
            sample = world.make(rng.choices(categories, weights)[0], rng)
            if sample.id not in seen:  # distinct, and the test split never overlaps train
                seen.add(sample.id)
                samples.append(sample)
        return samples

    seen: set[str] = set()
    train = draw(n_train, seen)
    test = draw(n_test, seen)
    noise_kinds = list(LABEL_NOISE)
    for sample in train:
        if sample.label and rng.random() < noise_rate:
            kind = rng.choice(noise_kinds)
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
