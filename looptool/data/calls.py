"""Turning text into tool calls: the shapes models and datasets write them in.

* ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (Hermes, Qwen, LoopTool-23k),
* Python-call syntax ``[f(a=1, b="x"), g()]`` (ToolACE, BFCL prompts) — parsed with :mod:`ast`,
  never evaluated,
* JSON: a call object, a list of them, or ``{"tool_calls": [...]}``, bare or in a fenced block,
* OpenAI ``tool_calls`` objects (``{"function": {"name", "arguments": "<json string>"}}``).

Text that is none of these raises :class:`CallParseError` — for a probe that is a *failed*
sample with error type ``parse``, not a crash.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import msgspec

from looptool.data.samples import ToolCall
from looptool.kernel.errors import LoopToolError

MAX_CALL_TEXT = 100_000  # characters of Python call syntax parsed at most
# A reply is refused unparsed past this length: more than any generation limit LoopTool sets
# writes (12k+ tokens), and parse time must stay bounded even on degenerate output.
MAX_REPLY_CHARS = 200_000
_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_LOOKS_LIKE_PYTHON_CALL = re.compile(r"^\[?\s*[A-Za-z_][\w.]*\s*\(")
_SURROGATE = re.compile("[\ud800-\udfff]")
_FENCE = "```"
_FENCE_LANGUAGES = ("json", "python", "tool_call")


class CallParseError(LoopToolError, ValueError):
    """The text does not contain well-formed tool calls; ``reason`` says why."""

    def __init__(self, reason: str, text: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.text = text


def split_reasoning(text: str) -> tuple[str | None, str]:
    """``(reasoning, rest)``: strip ``<think>…</think>`` (reasoning models) before parsing.

    A linear scan: a regex over text with many unclosed ``<think>`` tags is quadratic."""
    open_tag, close_tag = "<think>", "</think>"
    parts: list[str] = []
    rest: list[str] = []
    position = 0
    while True:
        start = text.find(open_tag, position)
        end = text.find(close_tag, start + len(open_tag)) if start >= 0 else -1
        if start < 0 or end < 0:
            if start >= 0 and not parts and not text[:start].strip():
                # generation stopped inside the reasoning: there is no answer
                return text[start + len(open_tag) :].strip(), ""
            rest.append(text[position:])
            break
        rest.append(text[position:start])
        parts.append(text[start + len(open_tag) : end].strip())
        position = end + len(close_tag)
    if parts:
        return "\n".join(parts), "".join(rest).strip()
    return None, text.strip()


# --------------------------------------------------------------------------- JSON shapes


def call_from_json(obj: Any) -> ToolCall:
    """One call from the JSON shapes in use: {name, arguments|parameters}, OpenAI's
    {function: {name, arguments: "<json>"}}, or BFCL's {name: {args}}."""
    if not isinstance(obj, dict):
        raise CallParseError(f"a call must be a JSON object, got {type(obj).__name__}")
    if "function" in obj and isinstance(obj["function"], dict):
        obj = obj["function"]
    if "name" in obj:
        name = obj["name"]
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = msgspec.json.decode(args) if args.strip() else {}
            except (msgspec.DecodeError, RecursionError, UnicodeError) as exc:  # a lone surrogate: UnicodeError
                raise CallParseError(f"arguments of {name!r} are not valid JSON: {exc}") from None
        if not isinstance(name, str) or not name:
            raise CallParseError("call name must be a non-empty string")
        if not isinstance(args, dict):
            raise CallParseError(f"arguments of {name!r} must be an object, got {type(args).__name__}")
        return ToolCall(name=name, arguments=args)
    if len(obj) == 1:
        ((name, args),) = obj.items()
        if isinstance(args, dict):
            return ToolCall(name=name, arguments=args)
    raise CallParseError("a call object needs a 'name' (and 'arguments')")


def calls_from_json(obj: Any) -> list[ToolCall]:
    if isinstance(obj, dict) and "tool_calls" in obj:
        obj = obj["tool_calls"]
    if isinstance(obj, list):
        return [call_from_json(item) for item in obj]
    return [call_from_json(obj)]


def without_lone_surrogates(text: str) -> str:
    """``text`` with each lone UTF-16 surrogate (which a JSON ``\\ud800`` escape in a server's
    reply can carry, and no UTF-8 encoder accepts) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def _check_encodable(text: str) -> None:
    if len(text) > MAX_REPLY_CHARS:
        raise CallParseError(f"a reply of {len(text)} characters (limit {MAX_REPLY_CHARS})", text[:200])
    if without_lone_surrogates(text) is not text:
        raise CallParseError("the reply holds a lone surrogate, which no call can carry", text[:200])


def _decode_json(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise CallParseError(f"invalid JSON: {exc}", text) from None


def json_or_literal(text: str) -> Any:
    """JSON, or failing that a Python literal (Hermes v1 writes ``{'name': 'f', 'arguments':
    {'x': True}}``) — parsed with :mod:`ast`, never evaluated, bounded in size."""
    try:
        return msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError) as exc:
        json_error = exc
    source = text.strip()
    if len(source) > MAX_CALL_TEXT:
        raise CallParseError(f"text of {len(source)} characters (limit {MAX_CALL_TEXT})", text[:200])
    try:
        return _jsonable(ast.literal_eval(ast.parse(source, mode="eval").body))
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        raise CallParseError(f"invalid JSON (nor a Python literal): {json_error}", text[:200]) from None


# --------------------------------------------------------------------------- python syntax


def parse_python_calls(text: str) -> list[ToolCall]:
    try:
        return _parse_python_calls(text)
    except (RecursionError, MemoryError):  # a dotted name or literal nested past the stack
        raise CallParseError("Python call syntax nested too deeply", text[:200]) from None


def _parse_python_calls(text: str) -> list[ToolCall]:
    """``[f(a=1), mod.g(b=[1, 2])]`` or ``f(a=1)`` -> calls. Literals only; nothing is evaluated.

    Negative numbers, ``a + b`` of literals and similar constant expressions are folded the
    way :func:`ast.literal_eval` allows; names and calls inside arguments are rejected.
    """
    source = text.strip()
    if len(source) > MAX_CALL_TEXT:
        raise CallParseError(f"call text of {len(source)} characters (limit {MAX_CALL_TEXT})", text[:200])
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise CallParseError(f"not Python call syntax: {exc.msg}", text) from None
    except (RecursionError, MemoryError, ValueError):  # nesting too deep for the parser
        raise CallParseError("Python call syntax nested too deeply", text[:200]) from None
    body = tree.body
    nodes = body.elts if isinstance(body, (ast.List, ast.Tuple)) else [body]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call):
            raise CallParseError(f"expected a function call, got {type(node).__name__}", text)
        if node.args:
            raise CallParseError(f"call to {_dotted(node.func)} uses positional arguments", text)
        arguments = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise CallParseError(f"call to {_dotted(node.func)} uses **kwargs", text)
            arguments[keyword.arg] = _literal(keyword.value, text)
        calls.append(ToolCall(name=_dotted(node.func), arguments=arguments))
    return calls


def _dotted(node: ast.expr) -> str:
    parts = []
    while isinstance(node, ast.Attribute):  # a loop and one join: recursion built it quadratically
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise CallParseError(f"function name must be a dotted name, got {type(node).__name__}")
    parts.append(node.id)
    return ".".join(reversed(parts))


def _literal(node: ast.expr, text: str) -> Any:
    try:
        value = ast.literal_eval(node)
        return _jsonable(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise CallParseError(f"argument is not a literal: {_excerpt(node)}", text[:200]) from None


def _excerpt(node: ast.expr) -> str:
    try:
        return ast.unparse(node)[:80]
    except (RecursionError, MemoryError):
        return f"a {type(node).__name__} nested too deeply"


def _jsonable(value: Any) -> Any:
    # Tuples and sets become lists, as they would after a JSON round trip (BFCL does the same).
    if isinstance(value, (tuple, list, set, frozenset)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, complex | bytes):
        raise CallParseError(f"unsupported literal {value!r}")
    return value


def format_python_calls(calls: list[ToolCall]) -> str:
    """The inverse of :func:`parse_python_calls`."""
    parts = [f"{call.name}({', '.join(f'{key}={value!r}' for key, value in call.arguments.items())})" for call in calls]
    return f"[{', '.join(parts)}]"


# --------------------------------------------------------------------------- any model text


_LLAMA_PYTHON_TAG = "<|python_tag|>"
_LLAMA_END = ("<|eom_id|>", "<|eot_id|>")


def _semicolon_joined(text: str) -> list[str] | None:
    """The parts of ``{...}; {...}`` (Llama 3's several calls) split at top-level ``;`` — a
    linear scan that skips strings — or None when there is no such separator."""
    parts: list[str] = []
    depth, start, in_string, escaped = 0, 0, False, False
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        elif char == ";" and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
    if not parts:
        return None
    parts.append(text[start:].strip())
    return [part for part in parts if part]


def _fenced_blocks(text: str) -> list[str]:
    """The contents of each closed ```` ``` ```` fence (an optional language tag dropped), by a
    linear scan: a regex for this rescans from every whitespace after an unclosed fence."""
    blocks = []
    position = 0
    while (start := text.find(_FENCE, position)) >= 0 and (end := text.find(_FENCE, start + 3)) >= 0:
        inner = text[start + 3 : end]
        language = next((tag for tag in _FENCE_LANGUAGES if inner.startswith(tag)), "")
        blocks.append(inner[len(language) :].strip())
        position = end + 3
    return blocks


def _answer(text: str) -> str:
    """The reply without reasoning and without Llama 3's call markers (``<|python_tag|>`` before
    the call, ``<|eom_id|>`` after it), which a server keeps when it does not skip special tokens."""
    _, body = split_reasoning(text)
    body = body.removeprefix(_LLAMA_PYTHON_TAG).strip()
    for end in _LLAMA_END:
        body = body.removesuffix(end).rstrip()
    return body


def parse_calls(text: str) -> list[ToolCall]:
    """Calls from raw model text, trying each known shape — Hermes/Qwen ``<tool_call>`` blocks,
    JSON (one object, a list, or Llama 3's objects joined by ``;``), Python call syntax, fenced
    blocks of these. Raises :class:`CallParseError`."""
    _check_encodable(text)
    body = _answer(text)
    if not body:
        raise CallParseError("empty output", text)
    blocks = _TOOL_CALL.findall(body)
    if blocks:
        calls: list[ToolCall] = []
        for block in blocks:
            calls.extend(calls_from_json(json_or_literal(block.strip())))
        return calls
    # The whole reply first (a fence may sit inside a string argument), then fenced blocks.
    candidates = [body, *_fenced_blocks(body)]
    errors = []
    for candidate in candidates:
        try:
            if _LOOKS_LIKE_PYTHON_CALL.match(candidate) or candidate[:1] not in "[{":
                return parse_python_calls(candidate)
            joined = _semicolon_joined(candidate) if candidate[:1] == "{" else None
            if joined is not None:  # Llama 3: `{...}; {...}` for several calls
                return [call for part in joined for call in calls_from_json(_decode_json(part))]
            return calls_from_json(_decode_json(candidate))
        except CallParseError as exc:
            errors.append(exc.reason)
    # Report why the most specific candidate (the last fenced block, else the reply) failed.
    raise CallParseError(errors[-1] if errors else "no tool call found", text)


def format_tool_call_blocks(calls: list[ToolCall]) -> str:
    """Hermes/Qwen style: one ``<tool_call>`` JSON block per call."""
    encoder = msgspec.json.Encoder()
    return "\n".join(
        f"<tool_call>\n{encoder.encode({'name': c.name, 'arguments': c.arguments}).decode()}\n</tool_call>"
        for c in calls
    )


def extract_calls(text: str) -> list[ToolCall]:
    """Calls from a model reply that may legitimately be plain text (no call: ``[]``).

    A reply that *tries* to call — a ``<tool_call>`` tag, a JSON or fenced block, or a
    leading ``name(`` — must parse, or :class:`CallParseError` is raised.
    """
    _check_encodable(text)
    body = _answer(text)
    if not body:
        return []
    if "<tool_call>" in body or body[0] in "[{" or "```" in body or _LOOKS_LIKE_PYTHON_CALL.match(body):
        return parse_calls(body)
    return []
