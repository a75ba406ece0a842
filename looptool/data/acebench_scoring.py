"""ACEBench's scoring rules, for ACEBench items (``looptool score --format acebench``, the evaluator).

ACEBench (github.com/ACEBench/ACEBench, MIT) is not on PyPI. Its rules (``model_eval/checker.py``,
``eval_main.py``, ``model_eval/evaluation_helper.py``) are written again here, verdict for verdict
and quirks included, because a number is only comparable with ACEBench's own when it is scored
the same way:

- the rules are those of ACEBench's code at commit ``ACEBENCH_COMMIT`` (October 2025);
- a reply is a Python list of calls, ``[f(a=1), g(b="x")]``. A single-turn reply is read from its
  first outermost ``[...]`` (text around it is ignored, whitespace kept; brackets inside strings
  count too, as there); a multi-turn reply has *all* its whitespace deleted and is parsed whole
  (``"New York"`` becomes ``"NewYork"``). Calls we get as JSON are written in that syntax and read
  back the same way;
- a string matches when the expected one, lower-cased and stripped of `` ,./-_*^``, is
  *contained* in the predicted one; lists match element by element after the same
  normalisation; objects key by key, a value matching when its text contains the expected text;
- integers, numbers and booleans are checked for their type only, never their value, and a value
  whose type differs from the declared one but equals the expected value's type is accepted
  without a value check (this is also what happens to every enum parameter);
- several calls: the same multiset of names, and each expected call passes against some
  predicted call of that name; a list of ground truths is a list of alternatives;
- the special categories score the reply's text: ``incomplete`` needs "Missing necessary
  parameters", the function's name and each missing parameter; ``error_param`` needs "There is
  incorrect value" and each wrong value; ``irrelevant`` needs "the limitations of the function";
- a multi-turn dialogue (``normal_multi_turn_*_<dialogue>_<turn>``) counts as right only when all
  its turns are;
- the agent categories, scored offline from ACEBench's own result files: right end to end when the
  scenario classes' final states match the answer's; the process accuracy is the share of the
  milestone calls made in order (1 for an item right end to end). The evaluator plays
  ``agent_multi_step`` tasks itself (:mod:`looptool.loop.acebench_agent`);
- the summary weighs the unweighted means of the special (0.2676), normal (0.578) and agent
  (0.1545) categories; a category not scored counts 0, as in ACEBench's table.
"""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from looptool.data.checker import OK, CheckResult
from looptool.data.samples import Sample, ToolCall

Decoded = list[dict[str, dict[str, Any]]]

# The ACEBench commit whose evaluation these rules follow (github.com/ACEBench/ACEBench); what its
# maintainers changed since the commit the first version followed is tabled in the README.
ACEBENCH_COMMIT = "56dd66c"

NORMAL_CATEGORIES = (
    "normal_single_turn_single_function",
    "normal_single_turn_parallel_function",
    "normal_multi_turn_user_switch",
    "normal_multi_turn_user_adjust",
    "normal_similar_api",
    "normal_preference",
    "normal_atom_bool",
    "normal_atom_enum",
    "normal_atom_number",
    "normal_atom_list",
    "normal_atom_object_deep",
    "normal_atom_object_short",
)
SPECIAL_CATEGORIES = ("special_incomplete", "special_error_param", "special_irrelevant")
AGENT_CATEGORIES = ("agent_multi_turn", "agent_multi_step")
SUMMARY_WEIGHTS = {"special": 0.2676, "normal": 0.578, "agent": 0.1545}

# ACEBench's declared-type table; "enum" maps to a type no value has, so enums are only ever
# accepted through the expected value's type.
_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
    "list": list,
    "object": dict,
    "objectArray": list,
    "list(string)": list,
    "list(enum)": list,
    "int": int,
    "enum": enumerate,
    "number": int,
}
_NESTED = ("array", "tuple", "list(string)", "list(enum)", "object", "objectArray")
_NORMALISE = re.compile(r"[ ,./\-_*^]")


class AceDecodeError(ValueError):
    pass


# --------------------------------------------------------------------------- replies


def first_outermost_list(text: str) -> str | None:
    """The first outermost ``[...]`` of a reply, as ACEBench's single-turn evaluation cuts it
    (brackets counted wherever they are, inside strings too; None without a closed one)."""
    depth, start = 0, -1
    for i, char in enumerate(text):
        if char == "[":
            if depth == 0:
                start = i
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0 and start != -1:
                return text[start : i + 1]
    return None


def prompt_mode_text(category: str, reply: str) -> str | None:
    """What ACEBench parses of a text reply in a category (None: nothing, a format failure)."""
    if category.startswith("normal_multi_turn"):
        return "".join(reply.split())
    return first_outermost_list(reply)


def read_reply(category: str, reply: str) -> Decoded:
    """A text reply's calls as ACEBench's prompt mode reads them in ``category``."""
    text = prompt_mode_text(category, reply)
    if text is None:
        raise AceDecodeError("no [...] in the reply")
    return decode(text)


def decode(text: str) -> Decoded:
    """A reply's list of calls in ACEBench's syntax -> ``[{name: {argument: value}}]``."""
    try:
        body = ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        raise AceDecodeError(f"not a Python list of calls: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):  # nested past the parser's stack, or NUL bytes
        raise AceDecodeError("not a Python list of calls: nested too deeply") from None
    elements = getattr(body, "elts", None)
    if elements is None:
        raise AceDecodeError(f"not a list of calls: {type(body).__name__}")
    decoded = []
    for element in elements:
        if not isinstance(element, ast.Call):
            raise AceDecodeError(f"not a call: {ast.unparse(element)[:80]}")
        decoded.append(_call(element))
    return decoded


def as_reply(calls: Iterable[ToolCall]) -> str:
    """Calls written as the reply ACEBench's prompt asks for."""
    written = (f"{call.name}({', '.join(f'{k}={_python(v)}' for k, v in call.arguments.items())})" for call in calls)
    return f"[{', '.join(written)}]"


def _python(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_python(k)}: {_python(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_python(v) for v in value) + "]"
    return repr(value)


def _call(node: ast.Call) -> dict[str, dict[str, Any]]:
    return {_dotted(node.func): {kw.arg or "": _value(kw.value) for kw in node.keywords}}


def _dotted(node: ast.expr) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _value(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        return "..." if node.value is Ellipsis else node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant):
        operand: Any = node.operand.value
        return -operand  # ACEBench reads every unary operator as a minus
    if isinstance(node, ast.List):
        return [_value(v) for v in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_value(v) for v in node.elts)
    if isinstance(node, ast.Dict):
        return {_value(k): _value(v) for k, v in zip(node.keys, node.values, strict=True) if k is not None}
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Call):
        return _call(node)
    if isinstance(node, ast.Subscript):
        return ast.unparse(node)
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        # ACEBench evaluates the expression; only arithmetic on literals is evaluated here.
        return _ARITHMETIC[type(node.op)](_value(node.left), _value(node.right))
    raise AceDecodeError(f"unsupported value: {ast.unparse(node)[:80]}")


# --------------------------------------------------------------------------- normal categories


def normalise(text: str) -> str:
    return _NORMALISE.sub("", text).lower().replace("'", '"')


def check_normal(functions: list[dict[str, Any]], decoded: Decoded, truth: Any) -> CheckResult:
    """A decoded reply against a ground truth (or a list of alternatives): the first passing
    alternative wins; otherwise the first alternative's failure is reported."""
    alternatives = truth if isinstance(truth, list) else [truth]
    failures = []
    for alternative in alternatives:
        result = _check_calls(functions, decoded, alternative)
        if result.valid:
            return OK
        failures.append(result)
    return failures[0] if failures else CheckResult(False, "no_ground_truth", "no ground truth")


def _check_calls(functions: list[dict[str, Any]], decoded: Decoded, truth: dict[str, Any]) -> CheckResult:
    if len(decoded) != len(truth):
        return CheckResult(False, "wrong functions number", "The number of functions does not match the answer.")
    # ``name_1``/``name_2``: one function called twice (any trailing ``_<digits>`` goes, as in ACEBench).
    expected = [(key, re.sub(r"_\d+$", "", key), arguments) for key, arguments in truth.items()]
    predicted_names = Counter(next(iter(call)) for call in decoded)
    expected_names = Counter(name for _, name, _ in expected)
    if predicted_names != expected_names:
        return CheckResult(
            False, "function_mismatch", f"called {dict(predicted_names)}, expected {dict(expected_names)}"
        )
    for key, name, arguments in expected:
        function = _describe(functions, key)
        result = CheckResult(False, "simple_function_checker:unclear", "wrong_function")
        for call in decoded:
            if next(iter(call)) != name:
                result = CheckResult(False, "simple_function_checker:unclear", "wrong_function")
                continue
            result = _check_call(function, call, arguments)
            if result.valid:
                break
        if not result.valid:
            return result
    return OK


def _describe(functions: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    # ACEBench takes the first function whose name is *contained* in the answer's key.
    return next((f for f in functions if f.get("name", "") in key), None)


def _check_call(
    function: dict[str, Any] | None, call: dict[str, dict[str, Any]], expected: dict[str, Any]
) -> CheckResult:
    if function is None:
        return CheckResult(False, "wrong_function_name", "no offered function matches the answer")
    schema = function.get("parameters", function.get("arguments", {}))
    arguments = next(iter(call.values()))
    if arguments == {} or schema == {}:
        ok = arguments == {} and schema == {}
        return OK if ok else CheckResult(False, "wrong_param", "arguments given where none are declared, or none given")
    properties = schema.get("properties", {})
    if expected == properties:
        return OK
    if expected == {}:
        return CheckResult(False, "wrong_param", "the answer expects no arguments")
    name = function.get("name", "")
    if name not in call:
        return CheckResult(False, "wrong_function_name", f"expected {name}, got {next(iter(call))}")
    for param in schema.get("required", []):
        if param not in arguments:
            return CheckResult(False, "lack_args", f"lack required_params: {param}")
    for param, value in arguments.items():
        if param not in properties or param not in expected:
            return CheckResult(False, "addition_args", f"addition params: {param}")
        result = _check_argument(name, param, value, properties[param], expected[param])
        if not result.valid:
            return result
    return OK


def _check_argument(function: str, param: str, value: Any, declared: dict[str, Any], expected: Any) -> CheckResult:
    declared_type = declared.get("type", "")
    if declared_type not in _TYPES:
        return CheckResult(False, "type_error", f"{param}: undeclared type {declared_type!r}")
    python_type = _TYPES[declared_type]
    item_type: type | None = None
    if declared_type in _NESTED:
        items = declared.get("items")
        item_name = items.get("type") if isinstance(items, dict) and "type" in items else None
        if item_name is None:
            item_name = "string" if "string" in declared_type else "enum" if "enum" in declared_type else "dict"
        item_type = _TYPES.get(item_name, str)
    if declared_type == "tuple" and isinstance(value, tuple):
        value = list(value)
    if declared_type == "float" and type(value) is int:
        value = float(value)
    type_ok, variable = _type_check(value, expected, python_type, item_type)
    if not type_ok:
        return CheckResult(
            False, "type_error", f"wrong type for parameter ({param}) of api ({function}): {type(value).__name__}"
        )
    if variable:
        return OK

    def wrong(kind: str) -> CheckResult:
        return CheckResult(False, kind, f"wrong value for parameter ({param}) of api ({function}): {value!r:.200}")

    if python_type is dict:
        return OK if _dict_matches(value, expected) else wrong("value_error")
    if python_type is list and item_type is dict:
        if not isinstance(expected, list) or len(value) != len(expected):
            return wrong("value_error:list_dict_count")
        return OK if all(map(_dict_matches, value, expected)) else wrong("value_error")
    if python_type is str:
        return OK if normalise(expected) in normalise(value) else wrong("value_error:string")
    if python_type is list:
        return OK if _normalised_list(value) == _normalised_list(expected) else wrong("value_error:list/tuple")
    return OK  # integers, numbers, booleans: the type is all ACEBench checks


def _type_check(value: Any, expected: Any, python_type: type[Any], item_type: type[Any] | None) -> tuple[bool, bool]:
    """``(passes, variable)``: ``variable`` skips the value check, as ACEBench's ``is_variable``."""
    expected_type = type(expected) if expected != "" else None
    variable = expected_type is not None and expected_type is not python_type
    value = {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value
    if type(value) is python_type:
        if item_type is None:
            return True, variable
        for option in expected if isinstance(expected, (list, tuple, dict, str)) else ():
            if not isinstance(option, list) or all(_type_check(v, option, item_type, None)[0] for v in value):
                return True, variable
    if expected_type is not None and (type(value) is expected_type or expected == value):
        # Accepted because it has the expected value's type — unless the nested check above failed.
        nested_failed = type(value) is python_type and item_type is not None
        return not nested_failed, True
    return False, variable


def _dict_matches(value: Any, expected: Any) -> bool:
    if not isinstance(value, dict) or not isinstance(expected, dict) or len(value) != len(expected):
        return False
    for key, item in value.items():
        item = {"true": True, "false": False}.get(item, item) if isinstance(item, str) else item
        if key not in expected:
            return False
        want = expected[key]
        if isinstance(want, dict):
            if not _dict_matches(item, want):
                return False
            continue
        got = normalise(item) if isinstance(item, str) else item
        want = normalise(want) if isinstance(want, str) else want
        if str(want) not in str(got):
            return False
    return True


def _normalised_list(values: Any) -> list[Any]:
    return [normalise(v) if isinstance(v, str) else v for v in values]


# --------------------------------------------------------------------------- special categories


def check_special(category: str, reply: str, truth: Any) -> CheckResult:
    if "incomplete" in category:
        for function, missing in truth.items():
            if "Missing necessary parameters" not in reply:
                return CheckResult(False, "error_detection", f"did not say that {function} lacks {missing}")
            if function not in reply or any(value not in reply for value in missing):
                return CheckResult(False, "error_correction", f"did not name {function}'s missing {missing}")
        return OK
    if "error" in category:
        for param, values in truth.items():
            if "There is incorrect value" not in reply:
                return CheckResult(False, "error_detection", f"did not say that {param} is wrong")
            if any(value not in reply for value in values):
                return CheckResult(False, "error_correction", f"did not name the wrong values {values}")
        return OK
    if "irrelevant" in category and "the limitations of the function" not in reply:
        return CheckResult(False, "error_detection", "did not say the functions cannot solve it")
    return OK


# --------------------------------------------------------------------------- agent categories


def check_agent(truth: Any, states: list[Any]) -> CheckResult:
    """End to end: the scenario classes' final states (``[{class: {attribute: value}}]``, as
    ACEBench's inference saves them) against the ground truth's. As in ACEBench, each expected
    class is compared with the first state of the same attribute names, nested objects key by key,
    and an expected class that no state matches is not itself a failure (only the count is)."""
    expected = truth if isinstance(truth, list) else [truth]
    if len(expected) != len(states):
        return CheckResult(False, "wrong number of class", f"{len(states)} classes, expected {len(expected)}")
    for want in expected:
        got = next((state for state in states if set(state) == set(want)), None)
        if got is None:
            continue
        ((name, want_attributes),) = want.items()
        for attribute, value in next(iter(got.values())).items():
            wanted = want_attributes.get(attribute, _MISSING)
            if wanted is _MISSING:
                return CheckResult(False, "class attributes wrong", f"{name}.{attribute} is not in the answer")
            if isinstance(wanted, dict):
                if not isinstance(value, dict) or any(key not in value or value[key] != v for key, v in wanted.items()):
                    return CheckResult(False, "class attributes wrong", f"{name}.{attribute}: {value!r:.200}")
            elif wanted != value:
                return CheckResult(False, "class attributes wrong", f"{name}.{attribute}: {value!r:.200}")
    return OK


_MISSING = object()


def process_accuracy(milestones: list[Any], process: list[str]) -> float:
    """The share of the milestone calls found, in order, among the calls executed (the best over
    alternative milestone lists)."""
    if milestones and isinstance(milestones[0], list):
        return max(process_accuracy(alternative, process) for alternative in milestones)
    if not milestones:
        return 1.0
    found, position = 0, 0
    for stone in milestones:
        while position < len(process):
            position += 1
            if process[position - 1].strip() == stone.strip():
                found += 1
                break
    return found / len(milestones)


# --------------------------------------------------------------------------- items and summary


def check_item(sample: Sample, reply: str | None, calls: list[ToolCall] | None = None) -> CheckResult:
    """One imported ACEBench item (``meta`` from :func:`~looptool.data.formats.acebench.import_acebench`)
    against a reply as ACEBench's own evaluation reads it: the raw text when there is any (its
    prompt mode, :func:`prompt_mode_text`: one Python list of calls — no JSON, no tool-call
    blocks), else the calls a server parsed out of it (its function-calling mode). LoopTool's lenient
    parser (:func:`~looptool.data.calls.extract_calls`) never stands behind an ACEBench number."""
    category = sample.meta["acebench_category"]
    truth = sample.meta["acebench_ground_truth"]
    if category.startswith("special"):
        return check_special(category, reply if reply else as_reply(calls or []), truth)
    if not reply and calls is not None:  # ACEBench's function-calling ("FC") mode: the calls as given
        decoded: Decoded = [{call.name: dict(call.arguments)} for call in calls]
        return check_normal(sample.meta["acebench_functions"], decoded, truth)
    try:  # its prompt mode: the raw text, read only as its own evaluation reads it
        decoded = read_reply(category, reply or "")
    except (AceDecodeError, TypeError, ValueError) as exc:
        return CheckResult(False, "wrong_output_format", f"Invalid syntax. Failed to decode AST. {exc}")
    return check_normal(sample.meta["acebench_functions"], decoded, truth)


def dialogue_of(ace_id: str) -> str:
    """``normal_multi_turn_user_adjust_3_1`` -> ``normal_multi_turn_user_adjust_3``."""
    return ace_id.rsplit("_", 1)[0]


def summary(accuracy: dict[str, float]) -> dict[str, float]:
    """ACEBench's summary rows from per-category accuracy (missing categories count 0)."""

    def mean(categories: tuple[str, ...]) -> float:
        return sum(accuracy.get(c, 0.0) for c in categories) / len(categories)

    groups = {"normal": mean(NORMAL_CATEGORIES), "special": mean(SPECIAL_CATEGORIES), "agent": mean(AGENT_CATEGORIES)}
    return {**groups, "summary": sum(SUMMARY_WEIGHTS[group] * value for group, value in groups.items())}
