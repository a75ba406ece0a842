"""ACEBench's agent_multi_step tasks played in scenario classes and scored by ACEBench's rules.

ACEBench's own scenario classes cannot travel with these tests (the benchmark is not on PyPI and
its code is not copied), so the fixture checkout ``fixtures/formats/acebench_card`` holds small
classes written for the tests in its layout (``model_inference/multi_step/scenariosen/...``).
A scripted policy stands in for the model so that the outputs, and so the verdicts, are fixed;
each expected verdict is worked out from ACEBench's rules beside its case. The rollout against a
served model is in ``test_trainer_evaluator.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import pytest

from looptool.data.samples import Sample, ToolCall
from looptool.llm.client import Prediction
from looptool.loop.acebench_agent import GO_ON, MAX_MESSAGES, AgentItem, AgentSetError, evaluate_agent
from looptool.loop.evaluation import EvalSetError, evaluate, load_eval_sets, metrics

ACEBENCH = Path(__file__).parent / "fixtures" / "formats" / "acebench_card"
QUESTIONS = ACEBENCH / "data_agent_multi_step.json"
FINISH = "finish conversation"

WIFI = ToolCall("turn_on_wifi", {})
SEND = ToolCall("send_message", {"sender_name": "Ana", "receiver_name": "Bruno", "message": "Lunch at noon?"})
OLDEST = ToolCall("get_earliest_message_id", {})


def delete(message_id: int) -> ToolCall:
    return ToolCall("delete_message", {"message_id": message_id})


class ScriptedPolicy:
    """Answers each request with the next scripted reply: a batch of calls, or text."""

    def __init__(self, replies: list[list[ToolCall] | str]) -> None:
        self.replies = list(replies)
        self.requests: list[Sample] = []

    async def predict(self, sample: Sample, model: str, *, max_tokens: int) -> Prediction:
        self.requests.append(sample)
        reply = self.replies.pop(0) if self.replies else "I cannot do that."
        return Prediction(calls=[], raw=reply) if isinstance(reply, str) else Prediction(calls=reply, raw="")


def items() -> dict[str, AgentItem]:
    loaded = load_eval_sets([str(QUESTIONS)])
    assert all(isinstance(item, AgentItem) for item in loaded)
    return {item.id: item for item in loaded if isinstance(item, AgentItem)}


CASES = [
    # (task, replies, valid, error type, process accuracy, requests made)
    ("agent_multi_step_0", [[WIFI], [SEND], FINISH], True, "", 1.0, 3),
    ("agent_multi_step_0", [[WIFI, SEND], FINISH], True, "", 1.0, 2),  # one batch, run in order
    # Wi-Fi is off when the message is sent: it is refused and the inbox stays as it was; of the
    # milestones (wifi, then send) only the first is found after the send: 1/2
    ("agent_multi_step_0", [[SEND], [WIFI], FINISH], False, "class attributes wrong", 0.5, 3),
    # a "finish" in the first reply does not end the task (ACEBench stops only after an exchange)
    ("agent_multi_step_0", [FINISH, [WIFI], [SEND], FINISH], True, "", 1.0, 4),
    # never a call: no scenario ran, so no class states (20 replies, ACEBench's 40 messages)
    ("agent_multi_step_0", [], False, "wrong number of class", 0.0, MAX_MESSAGES // 2),
    ("agent_multi_step_1", [[OLDEST], [delete(1)], FINISH], True, "", 1.0, 3),
    # the newer message deleted: neither milestone list is matched by "[delete_message(message_id=2)]"
    ("agent_multi_step_1", [[delete(2)], FINISH], False, "class attributes wrong", 0.0, 2),
]


@pytest.mark.parametrize(("task", "replies", "valid", "error_type", "process", "requests"), CASES)
def test_agent_tasks_are_played_and_scored_by_acebench_rules(
    task: str, replies: list, valid: bool, error_type: str, process: float, requests: int
) -> None:
    policy = ScriptedPolicy(replies)
    scored = anyio.run(lambda: evaluate_agent(policy, "m", items()[task], 64))  # type: ignore[arg-type]
    assert (scored.valid, scored.error_type, scored.process) == (valid, error_type, pytest.approx(process))
    assert scored.benchmark == "acebench" and scored.category == "agent_multi_step"
    assert len(policy.requests) == requests


def test_results_go_back_as_tool_messages_and_text_is_answered_with_a_request_to_go_on() -> None:
    policy = ScriptedPolicy(["Which Wi-Fi?", [WIFI], [SEND], FINISH])
    scored = anyio.run(lambda: evaluate_agent(policy, "m", items()["agent_multi_step_0"], 64))  # type: ignore[arg-type]
    assert scored.valid
    last = policy.requests[-1].messages
    assert [m.role for m in last] == ["system", "user", "assistant", "user", "assistant", "tool", "assistant", "tool"]
    assert last[3].content == GO_ON
    assert '"status": true' in (last[5].content or "") and "sent as message 2" in (last[7].content or "")


def test_only_public_scenario_methods_run() -> None:
    # ``_load_scenario`` would reset the phone; ``open`` is no method at all; a bad keyword fails
    # in the method. None of them may change a state, and each says it failed.
    poke = [
        ToolCall("_load_scenario", {"scenario": {"wifi": True}}),
        ToolCall("open", {"file": "/etc/passwd"}),
        ToolCall("turn_on_wifi", {"power": "max"}),
    ]
    policy = ScriptedPolicy([poke, [SEND], FINISH])
    scored = anyio.run(lambda: evaluate_agent(policy, "m", items()["agent_multi_step_0"], 64))  # type: ignore[arg-type]
    results = [m.content or "" for m in policy.requests[1].messages if m.role == "tool"]
    assert len(results) == 3 and all(r.startswith("Error during execution") for r in results), results
    assert not scored.valid and scored.error_type == "class attributes wrong"  # the message never left


def test_final_states_hold_the_saved_attributes_as_the_result_file_does() -> None:
    from looptool.loop.acebench_agent import rollout

    policy = ScriptedPolicy([[WIFI], [SEND], FINISH])
    done = anyio.run(lambda: rollout(policy, "m", items()["agent_multi_step_0"], 64))  # type: ignore[arg-type]
    base, messages = done.states
    assert base == {"BaseApi": {"wifi": True, "logged_in": True}}  # not the unsaved call counter
    assert list(messages) == ["MessageApi"] and list(messages["MessageApi"]) == ["inbox"]
    assert list(messages["MessageApi"]["inbox"]) == ["1", "2"]  # integer ids, read back through JSON
    assert done.process == [
        "[turn_on_wifi()]",
        "[send_message(sender_name='Ana', receiver_name='Bruno', message='Lunch at noon?')]",
    ]


def test_the_evaluator_scores_agent_tasks_with_acebench_summary_rows() -> None:
    loaded = load_eval_sets([str(QUESTIONS)])
    policy = ScriptedPolicy([[WIFI], [SEND], FINISH])  # task 0 right; task 1 never calls
    scored = anyio.run(lambda: evaluate(policy, "m", loaded[:1], 64))  # type: ignore[arg-type]
    scored += anyio.run(lambda: evaluate(ScriptedPolicy([]), "m", loaded[1:], 64))  # type: ignore[arg-type]
    scores = metrics(scored)
    assert scores["agent_multi_step"] == 0.5 and scores["agent_multi_step_process"] == 0.5
    assert scores["acebench_agent"] == pytest.approx(0.25)  # agent_multi_turn, not scored, counts 0
    assert len(load_eval_sets([f"{QUESTIONS}:1"])) == 1


def test_agent_sets_are_refused_by_name_without_a_checkout(tmp_path: Path) -> None:
    alone = tmp_path / "data_agent_multi_step.json"
    shutil.copy(QUESTIONS, alone)
    (tmp_path / "possible_answer").mkdir()
    shutil.copy(ACEBENCH / "possible_answer" / alone.name, tmp_path / "possible_answer" / alone.name)
    with pytest.raises(EvalSetError, match="model_inference/multi_step"):
        load_eval_sets([str(alone)])
    broken = ACEBENCH / "data_agent_multi_step.json"
    bad = tmp_path / "ace" / "data_agent_multi_step.json"
    shutil.copytree(ACEBENCH, tmp_path / "ace")
    bad.write_text(
        broken.read_text().replace('"involved_classes": ["BaseApi", "MessageApi"]', '"involved_classes": ["Phone"]', 1)
    )
    with pytest.raises(
        EvalSetError, match=r"data_agent_multi_step.json:1: involved_classes: no scenario class \['Phone'\]"
    ):
        load_eval_sets([str(bad)])


class ScriptedUser:
    """The simulated user's lines, in order; records the conversation as it was shown each time."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = list(lines)
        self.heard: list[list[dict[str, str]]] = []

    async def respond(self, messages: list[dict[str, str]]) -> str:
        self.heard.append([dict(m) for m in messages])
        return self.lines.pop(0) if self.lines else "Hm."


BRUNO_SENDS = ToolCall("send_message", {"sender_name": "Bruno", "receiver_name": "Ana", "message": "See you at six"})
TURN_CASES = [
    # (agent replies, user lines, valid, error type, process accuracy, agent requests, user requests)
    (
        ["Who sends it?", [WIFI], [BRUNO_SENDS], "Sent."],
        ["Send Ana: See you at six", "Me, Bruno.", FINISH],
        True,
        "",
        1.0,
        4,
        3,
    ),
    # the agent never turns the Wi-Fi on: the message is refused, the inbox stays empty; of the
    # milestones (wifi, then send) none is found in order
    (
        ["Who sends it?", [BRUNO_SENDS], "Sent."],
        ["Send Ana: See you at six", "Me, Bruno.", FINISH],
        False,
        "class attributes wrong",
        0.0,
        3,
        3,
    ),
    # the user gives up before the agent called anything: no scenario ran (a "finish" in the
    # first exchange would not count: ACEBench ends a dialogue only after it)
    (
        ["Who sends it?", "OK."],
        ["Send Ana: See you at six", "Me, Bruno.", FINISH],
        False,
        "wrong number of class",
        0.0,
        2,
        3,
    ),
]


@pytest.mark.parametrize(("replies", "lines", "valid", "error_type", "process", "asked", "heard"), TURN_CASES)
def test_multi_turn_tasks_are_played_with_a_user_simulator(
    replies: list, lines: list[str], valid: bool, error_type: str, process: float, asked: int, heard: int
) -> None:
    (item,) = load_eval_sets([str(ACEBENCH / "data_agent_multi_turn.json")])
    assert isinstance(item, AgentItem) and item.category == "agent_multi_turn"
    policy, user = ScriptedPolicy(replies), ScriptedUser(lines)
    scored = anyio.run(lambda: evaluate_agent(policy, "m", item, 64, user))  # type: ignore[arg-type]
    assert (scored.valid, scored.error_type, scored.process) == (valid, error_type, pytest.approx(process))
    assert (len(policy.requests), len(user.heard)) == (asked, heard)
    first = user.heard[0]
    assert first[0]["role"] == "system" and item.question in first[0]["content"] and first[1]["role"] == "user"
    assert policy.requests[0].messages[1].content == lines[0]  # the simulated user opens
    # the user hears the agent's text replies as "user" and its own lines as "assistant"
    if heard > 1:
        assert user.heard[1][-2:] == [
            {"role": "assistant", "content": lines[0]},
            {"role": "user", "content": "Who sends it?"},
        ]


def test_a_multi_turn_task_without_a_user_simulator_is_refused() -> None:
    (item,) = load_eval_sets([str(ACEBENCH / "data_agent_multi_turn.json")])
    assert isinstance(item, AgentItem)
    with pytest.raises(AgentSetError, match="user simulator"):
        anyio.run(lambda: evaluate_agent(ScriptedPolicy([]), "m", item, 64))  # type: ignore[arg-type]
