"""BFCL multi-turn evaluation: the served model plays an entry turn by turn, its calls run in
bfcl-eval's own backends (file system, trading bot, travel booking, ...), and bfcl-eval's own
multi-turn checker scores the result.

The rollout follows BFCL's function-calling inference loop (``inference_multi_turn_FC``):

- each turn adds its user messages; in ``miss_func`` entries the held-out functions are offered
  from their turn on, announced with BFCL's own message;
- within a turn the model is asked again after every batch of calls, the results added as tool
  messages, until it answers without a call;
- the calls of a reply are those the server parsed (``tool_calls``: BFCL's function-calling
  mode), else its text as bfcl-eval's own prompt-mode decoder reads it (``decode_execute``): a
  text it cannot read ends the turn there, as in BFCL — never LoopTool's lenient parser;
- a turn that runs past BFCL's step limit ends the entry, which then fails (force-terminated).

Only the backends' public methods are executed: any other name (``open``, ``eval``, ...) or an
argument name that is not an identifier turns the call into one that fails in the backend, so a
model's output never runs as code beyond the backends' own methods.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec

from looptool.data import bfcl_reference
from looptool.data.calls import CallParseError
from looptool.data.checker import CheckResult
from looptool.data.formats._common import tools_from
from looptool.data.formats.openai import parse_message
from looptool.data.samples import Message, Sample, ToolCall
from looptool.data.scoring import ScoredItem
from looptool.llm.client import ModelClient, ModelRequestError, Prediction

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class MultiTurnItem(msgspec.Struct, frozen=True):
    """One BFCL multi-turn entry, as BFCL's loader gives it, with its ground truth."""

    id: str
    category: str
    entry: dict[str, Any]
    ground_truth: list[list[str]]


def load_multi_turn(category: str) -> list[MultiTurnItem]:
    return [
        MultiTurnItem(entry["id"], category, entry, truth)
        for entry, truth in bfcl_reference.multi_turn_entries(category)
    ]


def call_string(call: ToolCall, allowed: set[str]) -> str:
    """A call as BFCL executes it (``name(arg=repr(value), ...)``, BFCL's ``convert_to_function_call``)."""
    if call.name not in allowed or not all(IDENTIFIER.match(key) for key in call.arguments):
        return "looptool_refused_call()"  # not a backend method: fails in the backend, runs nothing
    return f"{call.name}({','.join(f'{key}={value!r}' for key, value in call.arguments.items())})"


def answer_calls(prediction: Prediction) -> list[ToolCall]:
    """The calls BFCL would execute for a reply (none: the turn ends)."""
    if prediction.from_tool_calls:
        return prediction.calls
    try:
        return bfcl_reference.decode_execute_prompting(prediction.raw)
    except CallParseError:
        return []


class Rollout(msgspec.Struct):
    turns: list[list[list[str]]]  # turn -> step -> the calls executed at that step
    refused: str | None = None  # the server refused a request (e.g. context length): the entry fails


async def rollout(client: ModelClient, model: str, item: MultiTurnItem, max_tokens: int, instance: str) -> Rollout:
    from bfcl_eval.constants.default_prompts import DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC, MAXIMUM_STEP_LIMIT

    entry = item.entry
    tools = tools_from(entry["function"], "function")
    held_out: dict[str, list[Any]] = entry.get("missed_function", {})
    allowed = bfcl_reference.backend_methods(entry)
    messages: list[Message] = []
    turns: list[list[list[str]]] = []
    for index, turn in enumerate(entry["question"]):
        if str(index) in held_out:
            tools = tools + tools_from(held_out[str(index)], f"missed_function[{index}]")
            turn = [{"role": "user", "content": DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC}]
        messages += [parse_message(message, f"question[{index}]") for message in turn]
        steps: list[list[str]] = []
        turns.append(steps)
        while True:
            context = Sample(id=f"{item.id}:{index}:{len(steps)}", tools=tools, messages=messages)
            try:
                prediction = await client.predict(context, model, max_tokens=max_tokens)
            except ModelRequestError as exc:
                return Rollout(turns, refused=str(exc)[:500])
            answered = answer_calls(prediction)
            if not answered:
                messages.append(Message(role="assistant", content=prediction.raw))
                break
            calls = [call_string(call, allowed) for call in answered]
            results = bfcl_reference.execute(calls, entry, instance)
            messages.append(Message(role="assistant", tool_calls=answered))
            messages += [Message(role="tool", content=result) for result in results]
            steps.append(calls)
            if len(steps) > MAXIMUM_STEP_LIMIT:
                return Rollout(turns)  # force-terminated: fewer turns than the ground truth
    return Rollout(turns)


def score_rollout(item: MultiTurnItem, done: Rollout, instance: str) -> ScoredItem:
    if done.refused is not None:
        result = CheckResult(False, "refused", done.refused)
    else:
        try:
            verdict = bfcl_reference.check_multi_turn(done.turns, item.ground_truth, item.entry, instance)
        except Exception as exc:  # bfcl-eval's checker asserts on states it cannot compare: a failure
            verdict = {"valid": False, "error_type": "multi_turn:checker_error", "error_message": repr(exc)}
        result = CheckResult(
            verdict["valid"], verdict.get("error_type", ""), str(verdict.get("error_message", ""))[:500]
        )
    return ScoredItem(item.id, item.category, result.valid, result.error_type, result.error, benchmark="bfcl")


async def evaluate_multi_turn(client: ModelClient, model: str, item: MultiTurnItem, max_tokens: int) -> ScoredItem:
    """Roll one entry out against the served model and score it; the backends it used are
    dropped afterwards (bfcl-eval keeps them in module globals, by name)."""
    instance = f"looptool_{uuid.uuid4().hex[:12]}"
    try:
        return score_rollout(item, await rollout(client, model, item, max_tokens, instance), instance)
    finally:
        bfcl_reference.forget(instance)
