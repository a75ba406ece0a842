"""Parse time against reply length for adversarial shapes of model text, for every parser of
model text: tool calls (``parse_calls``, ``extract_calls``), ACEBench's call syntax, the judge's
and the generator's JSON replies.

    .venv/bin/python bench/parse_linearity.py --out bench/results/parse_linearity.json

Each shape is timed at 10k, 20k, 40k and 80k characters (best of ``--repeat``); the result is
the ratio of each time to the one before it. Linear parsing keeps every ratio near 2 (a
quadratic one near 4). Errors are part of the answer (a parser may refuse the text), but only
the parser's own error type: anything else is a crash and is listed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from looptool.data import acebench_scoring, bfcl_reference
from looptool.data.calls import CallParseError, extract_calls, parse_calls
from looptool.loop import expansion, judging

SIZES = (10_000, 20_000, 40_000, 80_000)


def _repeat(unit: str, n: int, prefix: str = "", suffix: str = "") -> str:
    return prefix + unit * max(1, (n - len(prefix) - len(suffix)) // len(unit)) + suffix


SHAPES: dict[str, Callable[[int], str]] = {
    "fence, then spaces": lambda n: _repeat(" ", n, "```json", "x"),
    "fence, then newlines": lambda n: _repeat("\n", n, "```"),
    "fences, never closed": lambda n: _repeat("```json ", n),
    "dotted name chain": lambda n: _repeat("a.", n, "", "b(x=1)"),
    "open brackets": lambda n: _repeat("[", n),
    "open braces": lambda n: _repeat("{", n),
    "quotes": lambda n: _repeat('"', n),
    "open think tags": lambda n: _repeat("<think>", n),
    "open tool_call tags": lambda n: _repeat("<tool_call>", n),
    "whitespace": lambda n: _repeat(" ", n),
    "python tag, then spaces": lambda n: _repeat(" ", n, "<|python_tag|>"),
    "semicolons between objects": lambda n: _repeat("{};", n),
    "a call with a long list": lambda n: _repeat("1, ", n, "[f(a=[", "])]"),
    "a call with a long string": lambda n: _repeat("x", n, "[f(a='", "')]"),
    "json call, long string": lambda n: _repeat("x", n, '{"name": "f", "arguments": {"a": "', '"}}'),
    "nested calls": lambda n: _repeat("f(a=", n),
}


def _judge_reply(text: str) -> Any:
    return judging._reply_decoder.decode(text)  # noqa: SLF001 - the judge's own reply decoder


PARSERS: dict[str, tuple[Callable[[str], Any], tuple[type[BaseException], ...]]] = {
    "parse_calls": (parse_calls, (CallParseError,)),
    "extract_calls": (extract_calls, (CallParseError,)),
    "acebench single-turn": (
        partial(acebench_scoring.read_reply, "normal_atom_list"),
        (acebench_scoring.AceDecodeError,),
    ),
    "acebench multi-turn": (
        partial(acebench_scoring.read_reply, "normal_multi_turn_user_adjust"),
        (acebench_scoring.AceDecodeError,),
    ),
    "bfcl prompt decode": (bfcl_reference.decode_prompting, (CallParseError,)),
    "judge reply": (_judge_reply, (msgspec.DecodeError, msgspec.ValidationError)),
    "generator reply": (expansion.parse_generated, ()),
}


def timed(
    parse: Callable[[str], Any], allowed: tuple[type[BaseException], ...], text: str, repeat: int
) -> tuple[float, str | None]:
    best, crash = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            parse(text)
        except allowed:
            pass
        except Exception as exc:  # a crash: not the parser's own error
            crash = f"{type(exc).__name__}: {str(exc)[:120]}"
        best = min(best, time.perf_counter() - start)
    return best, crash


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    rows, crashes, worst = [], [], 0.0
    for parser_name, (parse, allowed) in PARSERS.items():
        for shape, make in SHAPES.items():
            times = []
            for size in SIZES:
                seconds, crash = timed(parse, allowed, make(size), args.repeat)
                times.append(seconds)
                if crash:
                    crashes.append({"parser": parser_name, "shape": shape, "size": size, "crash": crash})
            # Below a millisecond the ratio is timer noise: it counts only for slower parses.
            ratios = [round(b / a, 2) if b > 1e-3 else None for a, b in zip(times, times[1:], strict=False)]
            worst = max([worst, *(r for r in ratios if r is not None)])
            rows.append(
                {"parser": parser_name, "shape": shape, "seconds": [round(t, 5) for t in times], "ratios": ratios}
            )
            print(f"{parser_name:16} {shape:28} {' '.join(f'{t:8.4f}' for t in times)}  {ratios}", file=sys.stderr)
    report = {
        "command": "python bench/parse_linearity.py " + " ".join(sys.argv[1:]),
        "sizes": SIZES,
        "worst_ratio_per_doubling": worst,
        "crashes": crashes,
        "rows": rows,
    }
    print(f"worst ratio per doubling: {worst}; crashes: {len(crashes)}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(msgspec.json.format(msgspec.json.encode(report)).decode() + "\n")


if __name__ == "__main__":
    main()
