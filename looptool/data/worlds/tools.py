"""The world's tools: a hand-written core and a procedural catalogue built from typed parameter kinds.

A :class:`Tool` knows how a request asks for it (``ask`` and each parameter's ``phrase``) and how
to draw argument values, so the world can write a request whose every value is grounded in it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from looptool.data.samples import FunctionSpec, ToolSpec

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
                _choice([12.5, 40.0, 75.0, 120.0, 250.0, 480.0, 999.99, 1500.0, 2200.0, 4875.5]),
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


# The procedural catalogue: nouns × verbs, each tool a few parameters drawn from typed kinds.
# A kind offers several (name, phrase) pairs, so two tools ask for the same kind of value under
# different parameter names — the policy must read the tool's schema, not recall one spelling.


@dataclass(frozen=True)
class Kind:
    schema: dict[str, Any]
    draw: Callable[[random.Random], Any]
    spellings: tuple[tuple[str, str], ...]  # (parameter name, phrase)


def _code(prefix: str) -> Callable[[random.Random], str]:
    codes = [f"{prefix}-{n}" for n in random.Random(prefix).sample(range(1000, 10000), 24)]
    return lambda rng: rng.choice(codes)


LEVELS = ["low", "normal", "high", "urgent"]
SIZES = ["small", "medium", "large"]
SPEEDS = ["standard", "express", "overnight"]
LANGUAGES = ["english", "spanish", "japanese", "norwegian"]
TAGS = ["work", "family", "travel", "health", "music", "sport", "school", "garden"]

KINDS: dict[str, Kind] = {
    "place": Kind(_s("City"), _choice(CITIES), (("city", "in {v}"), ("location", "at {v}"), ("region", "around {v}"))),
    "day": Kind(
        _s("Date, YYYY-MM-DD"), _choice(DATES), (("date", "on {v}"), ("day", "for the day {v}"), ("due", "due {v}"))
    ),
    "person": Kind(
        _s("Full name"), _choice(NAMES), (("name", "for {v}"), ("owner", "owned by {v}"), ("contact", "contact {v}"))
    ),
    "count": Kind(
        {"type": "integer", "description": "How many"},
        lambda r: r.randint(1, 12),
        (("quantity", "quantity {v}"), ("people", "for {v} people"), ("limit", "at most {v} results")),
    ),
    "money": Kind(
        {"type": "number", "description": "Amount in dollars"},
        lambda r: float(r.choice([15, 25, 40, 75, 120, 300])),
        (("budget", "with a budget of {v}"), ("max_price", "under {v} dollars"), ("amount", "for {v} dollars")),
    ),
    "level": Kind(_s("Priority", enum=LEVELS), _choice(LEVELS), (("priority", "with {v} priority"),)),
    "size": Kind(_s("Size", enum=SIZES), _choice(SIZES), (("size", "in size {v}"),)),
    "speed": Kind(_s("Delivery speed", enum=SPEEDS), _choice(SPEEDS), (("shipping", "with {v} shipping"),)),
    "language": Kind(_s("Language", enum=LANGUAGES), _choice(LANGUAGES), (("language", "in the {v} language"),)),
    "flag": Kind(
        {"type": "boolean", "description": "Yes or no"},
        _choice([True, False]),
        (("notify", "with notify set to {v}"), ("public", "with public set to {v}")),
    ),
    "tags": Kind(
        {"type": "array", "items": {"type": "string"}, "description": "Labels"},
        lambda r: r.sample(TAGS, r.randint(1, 3)),
        (("tags", "tagged {v}"), ("labels", "labelled {v}")),
    ),
    "reference": Kind(
        _s("Reference code"), _code("REF"), (("reference", "with reference {v}"), ("order_id", "for order {v}"))
    ),
}

NOUNS: dict[str, str] = {  # noun -> domain
    "parcel": "logistics",
    "shipment": "logistics",
    "table": "dining",
    "recipe": "dining",
    "playlist": "music",
    "concert": "music",
    "workout": "fitness",
    "class": "fitness",
    "ticket": "support",
    "invoice": "billing",
    "payment": "billing",
    "book": "library",
    "course": "education",
    "vet_visit": "pets",
    "car_rental": "mobility",
    "ride": "mobility",
}
VERBS: dict[str, str] = {  # verb -> how a request opens
    "find": "Find a {noun}",
    "book": "Book a {noun}",
    "cancel": "Cancel the {noun}",
    "track": "Track the {noun}",
    "update": "Update the {noun}",
    "create": "Create a {noun}",
    "rate": "Rate the {noun}",
    "share": "Share the {noun}",
}


def procedural_tools(seed: int = 2026, verbs_per_noun: int = 3) -> tuple[Tool, ...]:
    """The procedural catalogue (deterministic in ``seed``): ``verbs_per_noun`` tools per noun,
    each with 1-4 parameters of distinct kinds, the last one sometimes optional."""
    rng = random.Random(seed)
    tools = []
    for noun, domain in NOUNS.items():
        spoken = noun.replace("_", " ")
        for verb in rng.sample(sorted(VERBS), verbs_per_noun):
            params = []
            kinds = rng.sample(sorted(KINDS), rng.randint(1, 4))
            for position, kind_name in enumerate(kinds):
                kind = KINDS[kind_name]
                name, phrase = rng.choice(kind.spellings)
                optional = position == len(kinds) - 1 and position > 0 and rng.random() < 0.4
                params.append(Param(name, kind.schema, kind.draw, phrase, required=not optional))
            ask = VERBS[verb].format(noun=spoken)
            tools.append(Tool(domain, f"{verb}_{noun}", f"{verb.capitalize()} the {spoken}.", ask, tuple(params)))
    return tuple(tools)


PROCEDURAL: tuple[Tool, ...] = procedural_tools()
CATALOGUES: dict[str, tuple[Tool, ...]] = {"core": TOOLS, "rich": TOOLS + PROCEDURAL}
