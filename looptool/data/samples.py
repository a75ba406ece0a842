"""The canonical tool-calling data types: tool specs, messages, calls, and the :class:`Sample`.

A sample's id is derived from its content (:func:`sample_id`), so re-importing the same data
gives the same ids. Evolution rules as for events: new fields get defaults, never reorder.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal, TypeAlias

import msgspec


class FunctionSpec(msgspec.Struct, omit_defaults=True):
    """An OpenAI function definition; ``parameters`` is a JSON Schema object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolSpec(msgspec.Struct, omit_defaults=True):
    function: FunctionSpec
    type: Literal["function"] = "function"


class ToolCall(msgspec.Struct, omit_defaults=True):
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


Role: TypeAlias = Literal["system", "user", "assistant", "tool"]


class Message(msgspec.Struct, omit_defaults=True):
    role: Role
    content: str | None = None
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    name: str | None = None
    tool_call_id: str | None = None


class Lineage(msgspec.Struct, omit_defaults=True):
    """Where a sample came from and what changed it; travels with the sample forever."""

    origin: str = "seed"  # seed | expansion | correction
    round: int = 0
    parent: str | None = None  # the seed sample of an expansion or correction
    source: str | None = None  # file, generator, or verdict that produced it
    history: list[str] = msgspec.field(default_factory=list)


class Sample(msgspec.Struct, omit_defaults=True):
    """One training/probing item: tools + conversation so far + the expected calls.

    ``label`` is the expected list of calls; an empty list means "no call expected"
    (irrelevance). ``id`` is content-derived (see :func:`sample_id`) so that re-importing
    the same data gives the same ids.
    """

    id: str
    tools: list[ToolSpec]
    messages: list[Message]
    label: list[ToolCall] = msgspec.field(default_factory=list)
    category: str = "simple"
    meta: dict[str, Any] = msgspec.field(default_factory=dict)
    lineage: Lineage = msgspec.field(default_factory=Lineage)


_canonical = msgspec.json.Encoder(order="sorted")


def sample_id(tools: list[ToolSpec], messages: list[Message], label: list[ToolCall]) -> str:
    """A stable id derived from a sample's content (order-sensitive, key-order-insensitive)."""
    digest = hashlib.blake2b(_canonical.encode([tools, messages, label]), digest_size=10)
    return "s-" + digest.hexdigest()


SAMPLE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def valid_sample_id(value: str) -> bool:
    """Ids travel in message headers and KV keys: a short printable token, no spaces or CR/LF."""
    return SAMPLE_ID.fullmatch(value) is not None
