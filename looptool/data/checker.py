"""The AST checker, with BFCL's semantics (Python categories), saying *why* a call fails.

A label is a BFCL "possible answer": for each expected call, the function name and, per
parameter, the list of acceptable values (``""`` in the list marks the parameter optional).
A canonical :class:`~looptool.data.samples.Sample` with concrete label calls is converted with
:func:`possible_answer`; BFCL imports keep their own lists in ``sample.meta["possible_answer"]``.

Rules (each failure has BFCL's ``error_type``): the function name (a dotted name may come back
with ``_`` for ``.``, as OpenAI-style APIs require), required parameters present, no unknown
parameters, types (``int`` accepted for ``float``; arrays checked item by item, recursively),
the value in the acceptable list (strings compared after BFCL's normalisation), dictionaries and
lists of dictionaries key by key, optional parameters, parallel calls in any order, one call of
several offered functions, and irrelevance (no call expected).
"""

from __future__ import annotations

import re
from typing import Any, cast

import msgspec

from looptool.data.samples import Sample, ToolCall, ToolSpec

PossibleAnswer = list[dict[str, dict[str, list[Any]]]]

_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "number": float,  # JSON Schema's name for it
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "object": dict,
    "any": str,  # as BFCL maps it
}
_NESTED = {"array", "tuple"}
_STRIP = re.compile(r"[ \,\.\/\-\_\*\^]")


class CheckResult(msgspec.Struct, omit_defaults=True, frozen=True):
    valid: bool
    error_type: str = ""
    error: str = ""


OK = CheckResult(True)


def _fail(error_type: str, error: str) -> CheckResult:
    return CheckResult(False, error_type, error)


def standardize_string(text: str) -> str:
    """BFCL's normalisation: drop spaces and ``,./-_*^``, lower-case, ``'`` -> ``"``."""
    return _STRIP.sub("", text).lower().replace("'", '"')


def _standardize(value: Any) -> Any:
    return standardize_string(value) if type(value) is str else value


# --------------------------------------------------------------------------- labels


def possible_answer(label: list[ToolCall], tools: list[ToolSpec] | None = None) -> PossibleAnswer:
    """A concrete label as a BFCL possible answer: each value the only acceptable one, and the
    tool's optional parameters that the label leaves out accepted when absent."""
    functions = {tool.function.name: tool.function.parameters for tool in tools or []}
    answer: PossibleAnswer = []
    for call in label:
        params: dict[str, list[Any]] = {name: [_as_option(value)] for name, value in call.arguments.items()}
        schema = functions.get(call.name, {})
        required = set(schema.get("required", []))
        for name in schema.get("properties", {}):
            if name not in params and name not in required:
                params[name] = [""]
        answer.append({call.name: params})
    return answer


def _as_option(value: Any) -> Any:
    # BFCL writes an acceptable dictionary as {key: [acceptable values]}, also inside lists.
    if isinstance(value, dict):
        return {key: [item] for key, item in value.items()}
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return [_as_option(item) for item in value]
    return value


def sample_answer(sample: Sample) -> PossibleAnswer:
    given = sample.meta.get("possible_answer")
    return given if given is not None else possible_answer(sample.label, sample.tools)


def check_sample(sample: Sample, calls: list[ToolCall]) -> CheckResult:
    return check([tool.function for tool in sample.tools], calls, sample_answer(sample), sample.category)


def label_problem(sample: Sample) -> tuple[str, str] | None:
    """``(field, why)`` when a sample's label fails its own tools — a call to a tool that is not
    offered, a missing required parameter, a value of the wrong type — else None. A label
    that fails here would count every correct prediction as a failure."""
    if sample.category == "live_relevance":  # any call is right: BFCL gives no label to check
        return None
    offered = sorted(tool.function.name for tool in sample.tools)
    for index, call in enumerate(sample.label):
        if call.name not in offered:
            return f"label[{index}].name", f"calls {call.name!r}, which is not among the offered tools {offered}"
    result = check_sample(sample, sample.label)
    if result.valid:
        return None
    calls = ", ".join(call.name for call in sample.label)
    return "label", f"{calls}: fails its own tools: {result.error} ({result.error_type})"


# --------------------------------------------------------------------------- entry point


def check(functions: list[Any], calls: list[ToolCall], answer: PossibleAnswer, category: str = "") -> CheckResult:
    """Check predicted ``calls`` against ``answer``. ``functions`` are the offered function
    specs (``FunctionSpec`` or BFCL/OpenAI dicts with name/parameters)."""
    specs = {_name_of(f): _params_of(f) for f in functions}
    if category == "live_relevance":  # BFCL: any call is right (its answer is not checked)
        return OK if calls else _fail("relevance_error:no_call", "expected a call, got none")
    if not answer or "irrelevance" in category:
        if calls:
            return _fail("irrelevance_error:decoder_success", f"expected no call, got {[c.name for c in calls]}")
        return OK
    if not calls:
        return _fail("no_call", "expected a call, got none")
    if "parallel" in category or len(answer) > 1:
        return _parallel_no_order(specs, calls, answer)
    if len(calls) != len(answer):
        kind = "multiple_function_checker" if "multiple" in category else "simple_function_checker"
        return _fail(f"{kind}:wrong_count", "Wrong number of functions.")
    return _check_call(specs, calls[0], answer[0])


def _name_of(function: Any) -> str:
    return str(function["name"] if isinstance(function, dict) else function.name)


def _params_of(function: Any) -> dict[str, Any]:
    return (function.get("parameters") if isinstance(function, dict) else function.parameters) or {}


def _parallel_no_order(specs: dict[str, dict[str, Any]], calls: list[ToolCall], answer: PossibleAnswer) -> CheckResult:
    if len(calls) != len(answer):
        return _fail("parallel_function_checker_no_order:wrong_count", "Wrong number of functions.")
    # Greedy, in label order, exactly as BFCL does: each expected call takes the first
    # unmatched predicted call that passes.
    matched: set[int] = set()
    for position, expected in enumerate(answer):
        last = OK
        for index, call in enumerate(calls):
            if index in matched:
                continue
            last = _check_call(specs, call, expected)
            if last.valid:
                matched.add(index)
                break
        if not last.valid or len(matched) <= position:
            detail = f" (last: {last.error_type}: {last.error})" if not last.valid else ""
            return _fail(
                "parallel_function_checker_no_order:cannot_find_match",
                f"no predicted call matches expected call {position} ({next(iter(expected))}){detail}",
            )
    return OK


# --------------------------------------------------------------------------- one call


def _names_match(expected: str, got: str) -> bool:
    return got == expected or ("." in expected and got == expected.replace(".", "_"))


def _check_call(
    specs: dict[str, dict[str, Any]], call: ToolCall, expected: dict[str, dict[str, list[Any]]]
) -> CheckResult:
    ((name, accepted),) = expected.items()
    if not _names_match(name, call.name):
        return _fail(
            "simple_function_checker:wrong_func_name",
            f"Function name {name!r} not found in model output (got {call.name!r}).",
        )
    schema = specs.get(name)
    if schema is None:
        return _fail("label_error:unknown_function", f"the label calls {name!r}, which no offered tool defines")
    properties = schema.get("properties", {})
    for param in schema.get("required", []):
        if param not in call.arguments:
            return _fail("simple_function_checker:missing_required", f"Missing required parameter: {param!r}.")
    for param, value in call.arguments.items():
        if param not in properties or param not in accepted:
            return _fail("simple_function_checker:unexpected_param", f"Unexpected parameter: {param!r}.")
        result = _check_value(param, value, properties[param], accepted[param])
        if not result.valid:
            return result
    for param, values in accepted.items():
        if param not in call.arguments and "" not in values:
            return _fail(
                "simple_function_checker:missing_optional",
                f"Optional parameter {param!r} not provided and not marked as optional.",
            )
    return OK


def _check_value(param: str, value: Any, spec: dict[str, Any], accepted: list[Any]) -> CheckResult:
    declared = spec.get("type", "any")
    expected_type = _TYPES.get(declared, str)
    item_spec = spec.get("items", {}) if declared in _NESTED else None
    if expected_type is float and type(value) is int:
        value = float(value)
    typed = _check_type(param, value, accepted, declared, expected_type, item_spec)
    if not typed.valid:
        return typed
    if typed is not _VARIABLE:
        item_type = _TYPES.get(item_spec.get("type", "any"), str) if item_spec is not None else None
        if expected_type is dict:
            return _check_dict(param, value, accepted)
        if expected_type is list and item_type is dict:
            return _check_list_of_dicts(param, value, accepted)
        if expected_type is str:
            if standardize_string(value) not in [standardize_string(a) for a in accepted if type(a) is str]:
                return _fail(
                    "value_error:string",
                    f"Invalid value for parameter {param!r}: {value!r}. Expected one of {accepted}. Case insensitive.",
                )
            return OK
        if expected_type is list:
            standard = [_standardize(v) for v in value]
            # BFCL iterates each option, so the optional marker "" stands for the empty list.
            if standard not in [[_standardize(v) for v in a] for a in accepted if isinstance(a, (list, str))]:
                return _fail(
                    "value_error:list/tuple",
                    f"Invalid value for parameter {param!r}: {value!r}. Expected one of {accepted}.",
                )
            return OK
    if value not in accepted:
        return _fail(
            "value_error:others", f"Invalid value for parameter {param!r}: {value!r}. Expected one of {accepted}."
        )
    return OK


# A valid type check whose value is a "variable" (the label's own type, not the declared one):
# compared by plain membership, as BFCL does.
_VARIABLE = CheckResult(True, "variable")


def _answer_type(accepted: list[Any]) -> type | None:
    for value in accepted:
        if value != "":
            return type(value)
    return None


def _check_type(
    param: str, value: Any, accepted: list[Any], declared: str, expected_type: type, item_spec: dict[str, Any] | None
) -> CheckResult:
    answer_type = _answer_type(accepted)
    is_variable = answer_type is not None and answer_type is not expected_type
    if type(value) is expected_type:
        if item_spec is None:
            return _VARIABLE if is_variable else OK
        item_declared = item_spec.get("type", "any")
        item_type = _TYPES.get(item_declared, str)
        nested_items = item_spec.get("items", {}) if item_declared in _NESTED else None
        for option in accepted:
            # As in BFCL, a non-list option (the optional marker "") waives the item check.
            if type(option) is not list or all(
                _check_type(param, item, option, item_declared, item_type, nested_items).valid
                for item in cast(list[Any], value)
            ):
                return _VARIABLE if is_variable else OK
        # BFCL falls through to the "variable" test below before failing.
        if answer_type is not None and type(value) is answer_type:
            return _VARIABLE
        return _fail(
            "type_error:nested",
            f"Nested type checking failed for parameter {param!r}. Expected outer type {declared} with inner type {item_declared}. Parameter value: {value!r}.",
        )
    if answer_type is not None and type(value) is answer_type:
        return _VARIABLE
    return _fail(
        "type_error:simple",
        f"Incorrect type for parameter {param!r}. Expected type {declared}, got {type(value).__name__}. Parameter value: {value!r}.",
    )


def _check_dict(param: str, value: dict[str, Any], accepted: list[Any]) -> CheckResult:
    result = _fail("dict_checker:unclear", f"no acceptable dictionary for {param!r}")
    for option in accepted:
        if option == "":
            continue
        result = _dict_matches(value, option)
        if result.valid:
            return OK
    return result


def _dict_matches(value: dict[str, Any], option: dict[str, list[Any]]) -> CheckResult:
    for key, item in value.items():
        if key not in option:
            return _fail("value_error:dict_key", f"Unexpected dict key parameter: {key!r}.")
        standard = [_standardize(v) for v in option[key]]
        if _standardize(item) not in standard:
            return _fail(
                "value_error:dict_value", f"Invalid value for parameter {key!r}: {item!r}. Expected one of {standard}."
            )
    for key, values in option.items():
        if key not in value and "" not in values:
            return _fail("value_error:dict_key", f"Missing dict key parameter: {key!r}.")
    return OK


def _check_list_of_dicts(param: str, value: list[Any], accepted: list[Any]) -> CheckResult:
    result = _fail("list_dict_checker:unclear", f"no acceptable list of dictionaries for {param!r}")
    for option in accepted:
        if len(value) != len(option):
            result = _fail("value_error:list_dict_count", "Wrong number of dictionaries in the list.")
            continue
        for item, expected in zip(value, option, strict=False):
            result = (
                _check_dict(param, item, [expected])
                if isinstance(item, dict)
                else _fail("value_error:dict_value", f"{item!r} is not a dictionary")
            )
            if not result.valid:
                break
        else:
            return OK
    return result
