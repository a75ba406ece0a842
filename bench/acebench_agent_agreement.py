"""ACEBench's agent tasks: LoopTool's verdicts against ACEBench's own evaluation code, on its own data.

    .venv/bin/python bench/acebench_agent_agreement.py --acebench ~/ACEBench [--out FILE]

Needs a local ACEBench checkout (not on PyPI, so not in the test suite; its ``eval_main`` imports
openpyxl: ``pip install --target DIR openpyxl`` and ``--extra-path DIR`` will do). For every
agent task whose milestone calls parse as Python, a scripted policy replays them through
LoopTool's rollout in ACEBench's own scenario classes — as they are, and mutated (the last call
dropped, the first string value changed). A multi-turn task's user is scripted too: it states the
task, then ends the dialogue. Each run's final states and calls are written as ACEBench's result
lines and scored twice, by LoopTool (``looptool.data.scoring.score_agent``) and by ACEBench's
``eval_main.agent_eval`` (end to end, and its process accuracy); the verdicts are compared item
by item.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec

from looptool.data.samples import Sample, ToolCall
from looptool.llm.client import Prediction
from looptool.loop.acebench_agent import FINISH, AgentItem, rollout
from looptool.loop.evaluation import load_eval_sets

Script = list[list[ToolCall] | str]


class Replay:
    """A policy that answers with the next scripted batch of calls, then says it is done."""

    def __init__(self, script: Script) -> None:
        self.script = list(script)

    async def predict(self, sample: Sample, model: str, *, max_tokens: int) -> Prediction:
        step = self.script.pop(0) if self.script else FINISH
        return Prediction(calls=[], raw=step) if isinstance(step, str) else Prediction(calls=step, raw="")


class StatingUser:
    """A simulated user that states the task, then ends the dialogue."""

    def __init__(self, task: str) -> None:
        self.task = task

    async def respond(self, messages: list[dict[str, str]]) -> str:
        return self.task if len(messages) <= 2 else FINISH


def parse_calls(text: str) -> list[ToolCall]:
    node = ast.parse(text.strip(), mode="eval").body
    calls = node.elts if isinstance(node, ast.List) else [node]
    parsed = []
    for call in calls:
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            raise ValueError(f"not a call: {ast.unparse(call)}")
        parsed.append(ToolCall(call.func.id, {kw.arg or "": ast.literal_eval(kw.value) for kw in call.keywords}))
    return parsed


def scripts(item: AgentItem) -> dict[str, Script]:
    stones = item.answer.get("mile_stone") or []
    if stones and isinstance(stones[0], list):
        stones = stones[0]
    truth = [parse_calls(stone) for stone in stones]
    changed = copy.deepcopy(truth)
    strings = [
        (call, key)
        for batch in changed
        for call in batch
        for key, value in call.arguments.items()
        if isinstance(value, str)
    ]
    if strings:
        call, key = strings[0]
        call.arguments[key] += "_x"
    return {"truth": list(truth), "last call dropped": list(truth[:-1]), "a value changed": list(changed)}


async def play(item: AgentItem, script: Script) -> dict[str, Any]:
    user = StatingUser(item.question) if item.category == "agent_multi_turn" else None
    done = await rollout(Replay(script), "replay", item, 0, user)  # type: ignore[arg-type]
    return {"id": item.id, "result": done.states, "process": done.process}


def acebench_verdicts(checkout: Path, category: str, results: list[dict[str, Any]], answers: list[Any]) -> Any:
    """ACEBench's own ``agent_eval`` on result lines: ``(end to end, process, failed indices)``.
    It writes its score files relative to the working directory, so it runs in a scratch one."""
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    import eval_main  # ACEBench's, from the checkout

    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            Path("score_all/score_en/looptool").mkdir(parents=True)
            eval_main.OUTPUT_PATH = "out"
            eval_main.language = "en"
            end_to_end, process = eval_main.agent_eval(results, results, answers, category, "looptool")
            lines = Path(f"out/looptool/data_{category}_score.json").read_text().splitlines()
        finally:
            os.chdir(cwd)
    failed = {json.loads(line)["id"] for line in lines[1:]}
    return end_to_end, process, failed


def main(checkout: Path, out: str | None) -> None:
    from looptool.data.scoring import score_agent

    summary: dict[str, Any] = {"command": " ".join(["python", *sys.argv]), "categories": {}}
    for category in ("agent_multi_step", "agent_multi_turn"):
        questions = checkout / "data_all" / "data_en" / f"data_{category}.json"
        items = [item for item in load_eval_sets([str(questions)]) if isinstance(item, AgentItem)]
        playable, unparsed = [], []
        for item in items:
            try:
                playable.append((item, scripts(item)))
            except (SyntaxError, ValueError):
                unparsed.append(item.id)
        rows: list[dict[str, Any]] = []
        for kind in ("truth", "last call dropped", "a value changed"):
            results = [anyio.run(play, item, runs[kind]) for item, runs in playable]
            answers = [item.answer for item, _ in playable]
            ours = [
                score_agent(item.id, category, item.answer, r["result"], r["process"])
                for (item, _), r in zip(playable, results, strict=True)
            ]
            end_to_end, process, failed = acebench_verdicts(checkout, category, results, answers)
            disagree = [s.id for i, s in enumerate(ours) if s.valid == (i in failed)]
            our_process = sum(s.process or 0.0 for s in ours) / len(ours)
            rows.append(
                {
                    "outputs": kind,
                    "items": len(ours),
                    "looptool_end_to_end": round(sum(s.valid for s in ours) / len(ours), 3),
                    "acebench_end_to_end": end_to_end,
                    "looptool_process": round(our_process, 3),
                    "acebench_process": process,
                    "verdicts_disagreeing": disagree,
                }
            )
            print(json.dumps({"category": category, **rows[-1]}), flush=True)
        summary["categories"][category] = {"tasks": len(items), "milestones_not_python": unparsed, "runs": rows}
    if out:
        Path(out).write_bytes(msgspec.json.format(msgspec.json.encode(summary)) + b"\n")


def command_line(main: Callable[[Path, str | None], None], description: str | None) -> None:
    """The command line of the ACEBench agreement benches: a checkout, its imports, an output."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--acebench", required=True, type=Path, help="a local ACEBench checkout")
    parser.add_argument("--extra-path", action="append", default=[], help="where ACEBench's own imports live")
    parser.add_argument("--out", help="also write the results (and this command) to a JSON file")
    args = parser.parse_args()
    sys.path.extend(args.extra_path)
    main(args.acebench.resolve(), args.out)


if __name__ == "__main__":
    command_line(main, __doc__)
