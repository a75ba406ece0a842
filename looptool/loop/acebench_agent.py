"""ACEBench's agent tasks played against the served model, scored by ACEBench's rules.

The scenarios (a phone with messages, reminders and a food platform; a travel service) are
ACEBench's own classes, imported from the user's ACEBench checkout: the nearest directory above
the question file that holds ``model_inference/multi_step``. ACEBench is not on PyPI and its code
is not copied here; without a checkout the set is refused by name.

The rollout follows ACEBench's ``multi_step_inference`` and ``multi_turn_inference``, with the
model's native tool calls in place of ACEBench's text protocol:

- ``agent_multi_step``: the task's question is the one user message. ``agent_multi_turn``: the
  question is the instruction of a *user simulator* (a second model, ``evaluator.user_simulator``),
  which answers the agent's greeting with its first line and every later text reply of the agent
  with its next one;
- every class named in ``involved_classes`` is created and loaded with its ``initial_config`` entry
  and then with the ``BaseApi`` entry (as ACEBench loads them), on the first reply that calls a
  function;
- a call runs on every scenario instance that has that public method (a ``BaseApi`` method
  inherited by ``MessageApi`` changes both, as in ACEBench), its result going back as a tool
  message; in a multi-step task a reply without calls is answered with a request to go on;
- a message saying "finish conversation" after the first exchange ends the task (the agent's in
  either kind, the simulated user's in a multi-turn one); at most 40 messages (agent, execution
  and user) are exchanged, ACEBench's ``max_dialog_turns``.

The verdict is ACEBench's: the instances' saved attributes (``SAVED_ATTRIBUTES``) against the
answer's class states (:func:`~looptool.data.acebench_scoring.check_agent`), and the share of
milestone calls made in order. A task whose model never calls a function has no states and fails
("wrong number of class"). Only public methods of the scenario instances run, with keyword
arguments: a model's output is never evaluated as code.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any, Protocol

import msgspec

from looptool.data import acebench_scoring
from looptool.data.formats._common import RowError, load_answers, read_rows, tools_from
from looptool.data.samples import Message, Sample, ToolCall
from looptool.data.scoring import ScoredItem, score_agent
from looptool.kernel.errors import LoopToolError
from looptool.llm.client import ModelClient, ModelRequestError
from looptool.loop.multi_turn import IDENTIFIER

# Where ACEBench keeps each scenario class, under model_inference/multi_step/scenarios<language>/.
SCENARIO_MODULES = {
    "BaseApi": "phone_platform.base_api",
    "MessageApi": "phone_platform.message",
    "ReminderApi": "phone_platform.reminder",
    "FoodPlatform": "phone_platform.food_services",
    "Travel": "travel",
}
# The attributes ACEBench saves as a class's final state (its inference's SAVED_CLASS).
SAVED_ATTRIBUTES = {
    "BaseApi": ("wifi", "logged_in"),
    "MessageApi": ("inbox",),
    "ReminderApi": ("reminder_list",),
    "FoodPlatform": ("users", "logged_in_users", "orders"),
    "Finance": (
        "user_accounts",
        "is_logged_in",
        "deposit_history",
        "withdrawal_history",
        "loan_history",
        "orders",
        "holdings",
    ),
    "Travel": ("users", "reservations"),
}
MAX_MESSAGES = 40
FINISH = "finish conversation"
CATEGORIES = ("agent_multi_step", "agent_multi_turn")
SYSTEM_PROMPT = (
    "You carry out the user's request yourself with the functions provided, one step at a time, "
    "deciding each next step from the results of the last. Do not ask the user anything. "
    f"When the request is done, reply with the words '{FINISH}'."
)
GO_ON = f"Use what you know and the functions to finish the request; reply '{FINISH}' when it is done."
# The simulated user's side: its instruction is the task's question.
USER_PROMPT = (
    "You play a user talking to an assistant that acts for you. Your situation and goal: {instruction}\n"
    "Write one short line at a time, as this user. Give only the information the assistant needs for "
    "its current step, and never make up what your situation does not say. When everything you "
    f"wanted is done, write '{FINISH}' on a line of its own."
)
GREETING = "Hello, what can I do for you today?"


class AgentSetError(LoopToolError, ValueError):
    pass


class AgentItem(msgspec.Struct, frozen=True):
    """One ACEBench agent task with its answer row (``ground_truth``, ``mile_stone``); in a
    multi-turn task the question is the simulated user's instruction."""

    id: str
    category: str
    question: str
    functions: list[dict[str, Any]]
    initial_config: dict[str, Any]
    involved_classes: list[str]
    answer: dict[str, Any]
    scenarios: str  # the checkout's model_inference/multi_step/scenarios<language> package


def checkout_of(questions: Path) -> Path:
    """The ACEBench checkout a question file lies in (the nearest directory above it with the
    scenario classes)."""
    for directory in questions.resolve().parents:
        if (directory / "model_inference" / "multi_step").is_dir():
            return directory
    raise AgentSetError(
        f"{questions}: agent tasks run in ACEBench's scenario classes, and no directory above this file "
        "holds model_inference/multi_step (point evaluator.sets at the file inside an ACEBench checkout)"
    )


def load_agent_items(questions: str | Path, answers: str | Path) -> list[AgentItem]:
    """Every task of an ``agent_multi_step`` file; a row that does not load is an error naming
    its place (a benchmark set that silently shrinks would change what its number means)."""
    from looptool.data.formats.acebench import category_of_id

    questions = Path(questions)
    root = checkout_of(questions)
    language = "zh" if "data_zh" in questions.parts else "en"
    truth, errors = load_answers(answers, list, "{id, ground_truth: [class states], mile_stone}", keep_rows=True)
    items = []
    for line, row in read_rows(questions):
        where = f"{questions}:{line}"
        if isinstance(row, RowError):
            errors.append(row)
            continue
        try:
            ace_id = row["id"]
            category = category_of_id(ace_id)
            if category not in CATEGORIES:
                raise AgentSetError(f"{where}: id: {category!r} is not an ACEBench agent category")
            unknown = set(row["involved_classes"]) - SCENARIO_MODULES.keys()
            if unknown:
                raise AgentSetError(f"{where}: involved_classes: no scenario class {sorted(unknown)}")
            if ace_id not in truth:
                raise AgentSetError(f"{where}: id: no ground truth for {ace_id!r} in {answers}")
            items.append(
                AgentItem(
                    ace_id,
                    category,
                    row["question"],
                    row["function"],
                    row.get("initial_config") or {},
                    row["involved_classes"],
                    truth[ace_id],
                    str(root / "model_inference" / "multi_step" / f"scenarios{language}"),
                )
            )
        except (KeyError, TypeError) as exc:
            raise AgentSetError(f"{where}: {exc!r}: not an ACEBench agent row") from None
    if errors:
        raise AgentSetError(f"{errors[0]} ({len(errors)} bad rows)")
    return items


class Scenario:
    """The task's scenario instances, created and loaded as ACEBench's execution role does."""

    def __init__(self, item: AgentItem) -> None:
        package = Path(item.scenarios)
        checkout = str(package.parents[2])
        if checkout not in sys.path:  # ACEBench's modules import each other from its root
            sys.path.append(checkout)
        self.instances: dict[str, Any] = {}
        for name in item.involved_classes:
            module = importlib.import_module(f"model_inference.multi_step.{package.name}.{SCENARIO_MODULES[name]}")
            instance = getattr(module, name)()
            instance._load_scenario(copy.deepcopy(item.initial_config.get(name, {})), long_context=False)
            instance._load_scenario(copy.deepcopy(item.initial_config.get("BaseApi", {})), long_context=False)
            self.instances[name] = instance

    def execute(self, call: ToolCall) -> str:
        found = [] if call.name.startswith("_") else [getattr(i, call.name, None) for i in self.instances.values()]
        methods = [method for method in found if inspect.ismethod(method)]
        if not methods or not all(IDENTIFIER.match(key) for key in call.arguments):
            return f"Error during execution: no function {call.name!r}"
        result: Any = None
        try:
            for method in methods:
                result = method(**call.arguments)
        except Exception as exc:
            return f"Error during execution: {exc}"
        if isinstance(result, str):
            return result
        try:
            return json.dumps(result) if isinstance(result, dict) else str(result)
        except (TypeError, ValueError):
            return str(result)

    def states(self) -> list[dict[str, Any]]:
        """``[{class: {attribute: value}}]``, the final state ACEBench's inference saves, as its
        scorer reads it back from the result file: through JSON (integer keys become strings)."""
        saved = [
            {name: {k: v for k, v in vars(instance).items() if k in SAVED_ATTRIBUTES.get(name, ())}}
            for name, instance in self.instances.items()
        ]
        states: list[dict[str, Any]] = json.loads(json.dumps(saved, default=str))
        return states


def needs_user(item: object) -> bool:
    """Whether an evaluation item is a task only a user simulator can play."""
    return isinstance(item, AgentItem) and item.category == "agent_multi_turn"


class UserSimulator(Protocol):
    """The user's side of a multi-turn task: the next line, given the conversation so far as the
    simulated user sees it (its instruction as the system message, the agent as "user")."""

    async def respond(self, messages: list[dict[str, str]]) -> str: ...


class EndpointUser:
    """A user simulator served by an OpenAI-compatible endpoint, decoding greedily."""

    def __init__(self, client: ModelClient, model: str, max_tokens: int = 256) -> None:
        self.client, self.model, self.max_tokens = client, model, max_tokens

    async def respond(self, messages: list[dict[str, str]]) -> str:
        reply = await self.client.chat(self.model, messages=messages, temperature=0.0, max_tokens=self.max_tokens)
        return str(reply.choices[0].message.content or "")


class AgentRollout(msgspec.Struct):
    states: list[dict[str, Any]]  # empty when no function was ever called
    process: list[str]  # each reply's calls, in ACEBench's syntax
    refused: str | None = None


async def rollout(
    client: ModelClient, model: str, item: AgentItem, max_tokens: int, user: UserSimulator | None = None
) -> AgentRollout:
    if needs_user(item) and user is None:
        raise AgentSetError(f"{item.id}: a multi-turn agent task needs a user simulator (evaluator.user_simulator)")
    tools = tools_from(item.functions, "function")
    scenario: Scenario | None = None
    process: list[str] = []
    heard = [{"role": "system", "content": USER_PROMPT.format(instruction=item.question)}]
    try:
        if user is not None:  # the simulated user opens, answering the agent's greeting
            heard.append({"role": "user", "content": GREETING})
            opening = await user.respond(heard)
            heard.append({"role": "assistant", "content": opening})
        else:
            opening = item.question
        messages = [Message(role="system", content=SYSTEM_PROMPT), Message(role="user", content=opening)]
        index = 0  # ACEBench's message count: agent, execution and user messages alike
        while index < MAX_MESSAGES:
            context = Sample(id=f"{item.id}:{index}", tools=tools, messages=list(messages))  # as it was asked
            prediction = await client.predict(context, model, max_tokens=max_tokens)
            calls = [] if prediction.error_type else prediction.calls
            messages.append(
                Message(role="assistant", tool_calls=calls)
                if calls
                else Message(role="assistant", content=prediction.raw)
            )
            if not calls and index > 1 and FINISH in prediction.raw:
                break
            index += 1
            if index == MAX_MESSAGES:
                break
            if calls:
                scenario = scenario or Scenario(item)
                process.append(acebench_scoring.as_reply(calls))
                messages += [Message(role="tool", content=scenario.execute(call)) for call in calls]
            elif user is None:
                messages.append(Message(role="user", content=GO_ON))
            else:
                heard.append({"role": "user", "content": prediction.raw})
                line = await user.respond(heard)
                heard.append({"role": "assistant", "content": line})
                messages.append(Message(role="user", content=line))
                if index > 1 and FINISH in line:
                    break
            index += 1
    except ModelRequestError as exc:
        return AgentRollout([], process, refused=str(exc)[:500])
    return AgentRollout(scenario.states() if scenario else [], process)


async def evaluate_agent(
    client: ModelClient, model: str, item: AgentItem, max_tokens: int, user: UserSimulator | None = None
) -> ScoredItem:
    done = await rollout(client, model, item, max_tokens, user)
    if done.refused is not None:
        return ScoredItem(item.id, item.category, False, "refused", done.refused, benchmark="acebench", process=0.0)
    return score_agent(item.id, item.category, item.answer, done.states, done.process)
