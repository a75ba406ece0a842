"""BFCL multi-turn: rollouts in bfcl-eval's backends, verdicts equal to bfcl-eval's own evaluation.

The agreement tests need fixed model outputs, so a scripted policy stands in for the model here
(it replays the ground truth, or a mutation of it, turn by turn through the real rollout loop).
The rollout against a served model is in ``test_trainer_evaluator.py``.
"""

from __future__ import annotations

import ast
import copy
import json
import types
from typing import Any

import anyio
import pytest
from openai.types.chat import ChatCompletion

from looptool.data import bfcl_reference
from looptool.data.samples import Sample, ToolCall
from looptool.llm.client import Prediction, parse_response
from looptool.loop.multi_turn import MultiTurnItem, call_string, evaluate_multi_turn, load_multi_turn

ENTRIES_PER_CATEGORY = 6


def parse_truth(call: str, functions: list[dict[str, Any]]) -> ToolCall:
    """A ground-truth string (``sort('a.pdf')``, ``cd(folder='x')``) as a call with named
    arguments; positional ones take the declared parameters' order."""
    node = ast.parse(call, mode="eval").body
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    (doc,) = [f for f in functions if f["name"] == node.func.id]
    names = list(doc["parameters"]["properties"])
    arguments = {names[i]: ast.literal_eval(arg) for i, arg in enumerate(node.args)}
    arguments |= {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
    return ToolCall(node.func.id, arguments)


class ScriptedPolicy:
    """Answers each turn's first request with that turn's scripted calls, in one batch, and the
    request after their results with plain text; records what it answered, per turn."""

    def __init__(self, turns: list[list[ToolCall]]) -> None:
        self.turns = list(turns)
        self.answered: list[list[list[ToolCall]]] = []

    async def predict(self, sample: Sample, model: str, *, max_tokens: int) -> Prediction:
        if sample.messages[-1].role == "user":
            calls = self.turns.pop(0) if self.turns else []
            self.answered.append([calls] if calls else [])
            if calls:
                return Prediction(calls=calls, raw="", from_tool_calls=True)  # as a server's tool parser gives them
        return Prediction(calls=[], raw="Done.")


def script_of(item: MultiTurnItem) -> list[list[ToolCall]]:
    functions = item.entry["function"] + [f for fs in item.entry.get("missed_function", {}).values() for f in fs]
    return [[parse_truth(call, functions) for call in turn] for turn in item.ground_truth]


def mutations(script: list[list[ToolCall]]) -> dict[str, list[list[ToolCall]]]:
    last = max(i for i, turn in enumerate(script) if turn)
    dropped = copy.deepcopy(script)
    dropped[last] = dropped[last][:-1]
    changed = copy.deepcopy(script)
    call = next((c for turn in changed for c in turn if any(isinstance(v, str) for v in c.arguments.values())), None)
    if call is not None:
        key = next(k for k, v in call.arguments.items() if isinstance(v, str))
        call.arguments[key] = call.arguments[key] + "_x"
    extra = copy.deepcopy(script)
    extra[0] = extra[0] + extra[0][:1]
    return {"truth": script, "last call dropped": dropped, "a value changed": changed, "first call repeated": extra}


def bfcl_verdict(item: MultiTurnItem, answered: list[list[list[ToolCall]]]) -> dict[str, Any]:
    """bfcl-eval's own per-entry evaluation of the same outputs, written as its FC result file
    holds them and decoded as its FC handlers decode (``convert_to_function_call``)."""
    bfcl_reference.ast_checker()  # registers the stand-in model registry
    from bfcl_eval.model_handler.utils import convert_to_function_call

    result = [[[{c.name: json.dumps(c.arguments)} for c in step] for step in turn] for turn in answered]
    return entry_verdict(item, result, lambda output, has_tool_call_tag: convert_to_function_call(output))


def entry_verdict(item: MultiTurnItem, result: Any, decode_execute: Any) -> dict[str, Any]:
    """bfcl-eval's ``_evaluate_single_multi_turn_entry`` on a result file's entry, its handler
    decoding each step with ``decode_execute``."""
    from bfcl_eval.eval_checker.eval_runner import _evaluate_single_multi_turn_entry

    handler = types.SimpleNamespace(decode_execute=decode_execute)
    name = f"bfcl_reference_{abs(hash((item.id, json.dumps(result))))}"
    try:
        return dict(
            _evaluate_single_multi_turn_entry(
                handler, item.id, result, item.ground_truth, copy.deepcopy(item.entry), name, item.category
            )
        )
    finally:
        bfcl_reference.forget(name)


@pytest.mark.parametrize("category", bfcl_reference.MULTI_TURN_CATEGORIES)
def test_multi_turn_verdicts_equal_bfcl_eval(category: str) -> None:
    compared = valid = 0
    for item in load_multi_turn(category)[:ENTRIES_PER_CATEGORY]:
        for what, script in mutations(script_of(item)).items():
            policy = ScriptedPolicy(script)
            ours = anyio.run(evaluate_multi_turn, policy, "m", item, 64)  # type: ignore[arg-type]
            theirs = bfcl_verdict(item, policy.answered)
            assert ours.valid == theirs["valid"], (item.id, what, ours, theirs)
            if not ours.valid:
                assert ours.error_type == theirs["error"]["error_type"], (item.id, what)
            if what == "truth":
                assert ours.valid, (item.id, ours.error_type, ours.error)
            compared += 1
            valid += ours.valid
    assert valid < compared  # the mutations are caught, not only the truth passed


def python_list(calls: list[ToolCall]) -> str:
    return "[" + ", ".join(f"{c.name}({', '.join(f'{k}={v!r}' for k, v in c.arguments.items())})" for c in calls) + "]"


def json_list(calls: list[ToolCall]) -> str:
    return json.dumps([{"name": c.name, "arguments": c.arguments} for c in calls])


class TextPolicy:
    """A prompt-mode model: answers each turn's first request with that turn's scripted calls
    written as text (no ``tool_calls``), the request after them with "Done."; records every
    reply's text per turn, as BFCL's result file holds a prompt-mode model's steps."""

    def __init__(self, turns: list[list[ToolCall]], write: Any) -> None:
        self.turns, self.write = list(turns), write
        self.texts: list[list[str]] = []

    async def predict(self, sample: Sample, model: str, *, max_tokens: int) -> Prediction:
        text = "Done."
        if sample.messages[-1].role == "user":
            calls = self.turns.pop(0) if self.turns else []
            text = self.write(calls) if calls else text
            self.texts.append([])
        self.texts[-1].append(text)
        return parse_response(  # what the client makes of a reply without tool_calls
            ChatCompletion.model_validate(
                {
                    "id": "r",
                    "object": "chat.completion",
                    "created": 0,
                    "model": model,
                    "choices": [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                    ],
                }
            )
        )


def bfcl_prompting_verdict(item: MultiTurnItem, texts: list[list[str]]) -> dict[str, Any]:
    """bfcl-eval's own per-entry evaluation of a prompt-mode result file: each step's text
    decoded by its ``default_decode_execute_prompting``."""
    bfcl_reference.ast_checker()
    from bfcl_eval.model_handler.utils import default_decode_execute_prompting

    return entry_verdict(item, texts, default_decode_execute_prompting)


@pytest.mark.parametrize("write", [python_list, json_list], ids=["python list", "JSON list"])
def test_a_text_reply_is_executed_as_bfcl_evals_prompt_mode_reads_it(write: Any) -> None:
    """A JSON list is read by LoopTool's lenient parser but not by BFCL: its calls must not run."""
    compared = valid = 0
    for item in load_multi_turn("multi_turn_base")[:ENTRIES_PER_CATEGORY]:
        for what, script in mutations(script_of(item)).items():
            policy = TextPolicy(script, write)
            ours = anyio.run(evaluate_multi_turn, policy, "m", item, 64)  # type: ignore[arg-type]
            theirs = bfcl_prompting_verdict(item, policy.texts)
            assert ours.valid == theirs["valid"], (item.id, what, ours, theirs)
            compared += 1
            valid += ours.valid
    if write is python_list:
        assert 0 < valid < compared  # the truth passes, the mutations are caught
    else:
        assert valid == 0  # BFCL cannot read a JSON list, so no entry's calls ran


def test_miss_func_offers_held_out_functions_only_from_their_turn() -> None:
    item = next(i for i in load_multi_turn("multi_turn_miss_func") if i.entry.get("missed_function"))
    (turn, held_out), *_ = item.entry["missed_function"].items()
    offered: list[set[str]] = []

    class Recorder(ScriptedPolicy):
        async def predict(self, sample: Sample, model: str, *, max_tokens: int) -> Prediction:
            if sample.messages[-1].role == "user":
                offered.append({t.function.name for t in sample.tools})
            return await super().predict(sample, model, max_tokens=max_tokens)

    anyio.run(evaluate_multi_turn, Recorder(script_of(item)), "m", item, 64)  # type: ignore[arg-type]
    names = {f["name"] for f in held_out}
    assert all(not names & offered[i] for i in range(int(turn)))
    assert all(names <= offered[i] for i in range(int(turn), len(offered)))


def test_a_call_outside_the_backends_never_runs() -> None:
    allowed = {"cd", "ls"}
    assert call_string(ToolCall("cd", {"folder": "x"}), allowed) == "cd(folder='x')"
    for call in [
        ToolCall("open", {"file": "/etc/passwd", "mode": "w"}),
        ToolCall("__import__", {"name": "os"}),
        ToolCall("cd", {"folder=__import__('os').getcwd(),x": 1}),
    ]:
        assert call_string(call, allowed) == "looptool_refused_call()"
    item = load_multi_turn("multi_turn_base")[0]
    script = [[ToolCall("eval", {"source": "1"})]] + script_of(item)[1:]
    policy = ScriptedPolicy(script)
    scored = anyio.run(evaluate_multi_turn, policy, "m", item, 64)  # type: ignore[arg-type]
    assert not scored.valid


def test_bfcl_leaderboard_overall_uses_bfcl_weights() -> None:
    # Multi-turn is 30% of BFCL's overall: all four categories right and nothing else scored.
    perfect_multi_turn = {category: (10, 10) for category in bfcl_reference.MULTI_TURN_CATEGORIES}
    board = bfcl_reference.leaderboard(perfect_multi_turn)
    assert board["multi_turn"] == 1.0 and board["overall"] == pytest.approx(0.30)
    board = bfcl_reference.leaderboard({**perfect_multi_turn, "irrelevance": (5, 10), "live_irrelevance": (10, 10)})
    assert board["irrelevance"] == pytest.approx(0.75) and board["overall"] == pytest.approx(0.375)
    assert "live" not in board  # no live category scored: no live summary


def test_a_checker_crash_scores_the_entry_as_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    from looptool.loop.multi_turn import Rollout, score_rollout

    def crash(*args: Any) -> dict[str, Any]:
        raise AssertionError("Model instances and ground truth instances do not match in length")

    monkeypatch.setattr(bfcl_reference, "check_multi_turn", crash)
    item = load_multi_turn("multi_turn_base")[0]
    scored = score_rollout(item, Rollout(turns=[[]] * len(item.ground_truth)), "looptool_x")
    assert (scored.valid, scored.error_type) == (False, "multi_turn:checker_error")
    assert "do not match" in scored.error
