"""ACEBench's normal and special categories: LoopTool's verdicts against ACEBench's own
evaluation code, item by item, on right answers and mutations of them.

    git clone https://github.com/ACEBench/ACEBench ~/ACEBench && git -C ~/ACEBench checkout 56dd66c
    .venv/bin/python bench/acebench_agreement.py --acebench ~/ACEBench --extra-path DIR [--out FILE]

Needs a local ACEBench checkout (not on PyPI; its ``eval_main`` imports openpyxl:
``pip install --target DIR openpyxl`` and ``--extra-path DIR``). For every English item of the
normal and special categories (agents: ``bench/acebench_agent_agreement.py``), each reply
kind below is written as ACEBench's result line (``{"id", "result": text}``) and scored twice:
by ``looptool score``'s own path (``looptool.data.scoring.score`` on the files) and by
ACEBench's ``eval_main`` evaluation for the category (``normal_single_turn_eval``,
``normal_multi_turn_eval``, ``special_eval``), one item at a time so that each verdict is the
one its accuracy counts. Prints and writes agreement per category and reply kind.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from looptool.data import acebench_scoring
from looptool.data.scoring import score

Call = tuple[str, dict[str, Any]]


def render(calls: list[Call], *, brackets: bool = True, tuples: bool = False) -> str:
    def value(v: Any) -> str:
        if isinstance(v, list):
            inner = ", ".join(value(x) for x in v)
            return f"({inner}{',' if len(v) == 1 else ''})" if tuples else f"[{inner}]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k!r}: {value(x)}" for k, x in v.items()) + "}"
        return repr(v)

    body = ", ".join(f"{name}({', '.join(f'{k}={value(v)}' for k, v in args.items())})" for name, args in calls)
    return f"[{body}]" if brackets else body


def as_json(calls: list[Call]) -> str:
    return json.dumps([{"name": name, "arguments": args} for name, args in calls])


def _first_string(calls: list[Call]) -> tuple[dict[str, Any], str] | None:
    for _, args in calls:
        for key, v in args.items():
            if isinstance(v, str) and v:
                return args, key
    return None


def _with_string(calls: list[Call], change: Callable[[str], str]) -> list[Call]:
    copied = json.loads(json.dumps(calls))
    found = _first_string(copied)
    if found is None:
        raise LookupError("no string value")
    args, key = found
    args[key] = change(args[key])
    return copied


def _args_dropped(calls: list[Call]) -> list[Call]:
    copied = json.loads(json.dumps(calls))
    if not copied[0][1]:
        raise LookupError("no argument")
    copied[0][1].pop(next(reversed(copied[0][1])))
    return copied


MUTATIONS: dict[str, Callable[[list[Call]], str]] = {
    "right answer": render,
    "right answer, spaced": lambda c: render(c).replace(", ", " ,  ").replace("=", " = "),
    "JSON call list": as_json,
    "<tool_call> blocks": lambda c: "\n".join(
        f"<tool_call>\n{json.dumps({'name': n, 'arguments': a})}\n</tool_call>" for n, a in c
    ),
    "fenced list": lambda c: f"```python\n{render(c)}\n```",
    "<think> first": lambda c: f"<think>the user wants this</think>{render(c)}",
    "bare calls": lambda c: render(c, brackets=False),
    "tuples for arrays": lambda c: render(c, tuples=True),
    "a tab in a string": lambda c: render(_with_string(c, lambda s: s[:1] + "\t" + s[1:])),
    "text around the list": lambda c: f"Sure, here you go: {render(c)} Done.",
    "a note in brackets first": lambda c: f"Note [1]: {render(c)}",
    "an unclosed bracket first": lambda c: f"[draft {render(c)}",
    "a second list after": lambda c: f"{render(c)} or maybe {render(c[:1])}",
    "one call a line": lambda c: "[\n" + ",\n".join("  " + render([call], brackets=False) for call in c) + "\n]",
    "a space in a string": lambda c: render(_with_string(c, lambda s: s[:1] + " " + s[1:])),
    "a bracket in a string": lambda c: render(_with_string(c, lambda s: s + "]")),
    "a value changed": lambda c: render(_with_string(c, lambda s: s + "_x")),
    "a call dropped": lambda c: render(c[:-1]),
    "an argument dropped": lambda c: render(_args_dropped(c)),
    "a function renamed": lambda c: render([(c[0][0] + "_v2", c[0][1]), *c[1:]]),
}


def special_replies(category: str, truth: Any) -> dict[str, str]:
    truth = truth if isinstance(truth, dict) else {"": []}  # irrelevance: no function, no value
    names = ", ".join(truth)
    values = ", ".join(str(v) for vs in truth.values() for v in (vs if isinstance(vs, list) else [vs]))
    phrase = {
        "special_incomplete": f"Missing necessary parameters ({values}) for the api ({names})",
        "special_error_param": f"There is incorrect value ({values}) for the parameters ({names}) in the conversation history.",
        "special_irrelevant": "Due to the limitations of the function, I cannot solve this problem.",
    }[category]
    return {
        "right answer": phrase,
        "a call instead": render([(next(iter(truth)), {})]),
        "the phrase lower-cased": phrase.lower(),
    }


def calls_of(truth: Any) -> list[Call]:
    first = truth[0] if isinstance(truth, list) else truth
    return [(name, args) for name, args in first.items()]


def acebench_verdict(
    eval_main: Any, category: str, question: dict[str, Any], answer: dict[str, Any], text: str
) -> bool:
    result = [{"id": question["id"], "result": text}]
    if category.startswith("special"):
        accuracy = eval_main.special_eval(result, [question], [answer], category, "looptool", None)
    elif "multi_turn" in category:
        accuracy = eval_main.normal_multi_turn_eval(result, [question], [answer], category, "looptool", None)
    else:
        accuracy = eval_main.normal_single_turn_eval(result, [question], [answer], category, "looptool", None)
    return bool(accuracy == 1)


def main(checkout: Path, out: str | None) -> None:
    sys.path.insert(0, str(checkout))
    import eval_main  # ACEBench's, from the checkout

    eval_main.convert_result_to_excel = lambda *args, **kwargs: None  # its spreadsheet, not its verdict
    data = checkout / "data_all" / "data_en"
    summary: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "looptool_follows": acebench_scoring.ACEBENCH_COMMIT,  # the checkout should be at this commit
        "categories": {},
    }
    totals: Counter[str] = Counter()
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # ACEBench writes score files relative to the working directory
        eval_main.OUTPUT_PATH = "out"
        try:
            for questions_file in sorted(data.glob("data_*.json")):
                category = questions_file.stem.removeprefix("data_")
                if category.startswith("agent"):
                    continue
                questions = [json.loads(line) for line in questions_file.read_text().splitlines() if line.strip()]
                answers = {
                    a["id"]: a
                    for a in map(json.loads, (data / "possible_answer" / questions_file.name).read_text().splitlines())
                }
                replies: dict[str, dict[str, str]] = {}
                for q in questions:
                    truth = answers[q["id"]]["ground_truth"]
                    if category.startswith("special"):
                        replies[q["id"]] = special_replies(category, truth)
                        continue
                    made = {}
                    for kind, make in MUTATIONS.items():
                        try:
                            made[kind] = make(calls_of(truth))
                        except LookupError:  # no string to change, no argument to drop
                            pass
                    replies[q["id"]] = made
                kinds = sorted({kind for made in replies.values() for kind in made})
                rows = {}
                for kind in kinds:
                    items = [q for q in questions if kind in replies[q["id"]]]
                    predictions = Path(scratch) / f"{category}-{len(rows)}.jsonl"
                    predictions.write_text(
                        "".join(json.dumps({"id": q["id"], "result": replies[q["id"]][kind]}) + "\n" for q in items)
                    )
                    _, scored = score(questions_file, data / "possible_answer" / questions_file.name, predictions)
                    ours = {item.id: item.valid for item in scored}
                    theirs = {
                        q["id"]: acebench_verdict(eval_main, category, q, answers[q["id"]], replies[q["id"]][kind])
                        for q in items
                    }
                    disagree = sorted(i for i in theirs if ours.get(i) != theirs[i])
                    rows[kind] = {
                        "items": len(items),
                        "acebench_accepts": sum(theirs.values()),
                        "looptool_accepts": sum(1 for i in theirs if ours.get(i)),
                        "disagreeing": len(disagree),
                        "examples": disagree[:5],
                    }
                    totals["verdicts"] += len(items)
                    totals["agree"] += len(items) - len(disagree)
                    print(json.dumps({"category": category, "reply": kind, **rows[kind]}), flush=True)
                summary["categories"][category] = rows
        finally:
            os.chdir(cwd)
    summary["verdicts"] = totals["verdicts"]
    summary["agreement"] = round(totals["agree"] / max(1, totals["verdicts"]), 5)
    print(f"agreement: {totals['agree']}/{totals['verdicts']} = {summary['agreement']:.2%}", file=sys.stderr)
    if out:
        Path(out).write_bytes(msgspec.json.format(msgspec.json.encode(summary)) + b"\n")


if __name__ == "__main__":
    from acebench_agent_agreement import command_line  # this folder is the script's first import path

    command_line(main, __doc__)
