"""Tool parameters in the layouts datasets publish, as the JSON Schema objects the checker reads.

* JSON Schema (``{"type": "object", "properties": {...}, "required": [...]}``) passes through;
  BFCL's and ToolACE's type names (``dict``, ``float``, ``tuple``, ``any``) are the checker's own.
* xLAM / APIGen write a flat map ``name -> {"type": "str" | "List[int]" | "float, optional" | ...,
  "description", "default"}`` (Python type strings, no ``properties``). It becomes a JSON Schema
  object. **Optional/default rule**: a parameter is required unless its type says
  ``", optional"`` (or ``Optional[...]``) or it carries a ``"default"`` — xLAM's labels leave such
  parameters out. Unknown type strings (``Callable``, ``Union[...]``) get no ``type``: any value.
"""

from __future__ import annotations

from typing import Any

_PYTHON_TYPES = {
    "str": "string",
    "string": "string",
    "int": "integer",
    "integer": "integer",
    "float": "number",
    "number": "number",
    "bool": "boolean",
    "boolean": "boolean",
    "list": "array",
    "sequence": "array",
    "iterable": "array",
    "set": "array",
    "tuple": "array",
    "array": "array",
    "dict": "object",
    "mapping": "object",
    "object": "object",
}


def is_flat_map(parameters: Any) -> bool:
    """xLAM's layout: every value a parameter spec, and no ``properties``. (A flat map may hold
    a parameter named ``type``: its value is then a dict, not a JSON Schema type name.)"""
    return (
        isinstance(parameters, dict)
        and "properties" not in parameters
        and bool(parameters)
        and all(isinstance(spec, dict) for spec in parameters.values())
    )


def from_flat_map(parameters: dict[str, dict[str, Any]]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required = []
    for name, spec in parameters.items():
        declared = spec.get("type", "")
        schema, optional = python_type_schema(declared if isinstance(declared, str) else "")
        schema.update({key: value for key, value in spec.items() if key in ("description", "default", "enum")})
        properties[name] = schema
        if not optional and "default" not in spec:
            required.append(name)
    return {"type": "object", "properties": properties, "required": required}


def python_type_schema(text: str) -> tuple[dict[str, Any], bool]:
    """``"List[int], optional"`` -> ``({"type": "array", "items": {"type": "integer"}}, True)``."""
    text = text.strip()
    optional = False
    if text.lower().endswith(", optional"):
        text, optional = text[: -len(", optional")].strip(), True
    head, bracket, inner = text.partition("[")
    head = head.strip().lower().removeprefix("typing.")
    inner = inner[:-1].strip() if bracket and inner.endswith("]") else ""
    if head == "optional":
        return python_type_schema(inner)[0], True
    kind = _PYTHON_TYPES.get(head)
    if kind is None:
        return {}, optional
    schema: dict[str, Any] = {"type": kind}
    # One item type (List[int], Set[str]); a Tuple[int, str] or Dict[...] says nothing per item.
    if kind == "array" and inner and "," not in inner:
        items, _ = python_type_schema(inner)
        if items:
            schema["items"] = items
    return schema, optional


def parameters_schema(parameters: Any) -> Any:
    """JSON Schema for any published parameter layout (what is not recognised is left for
    :func:`~looptool.data.formats._common.schema_problem` to reject by name)."""
    if parameters is None:
        return {"type": "object", "properties": {}}
    if is_flat_map(parameters):
        return from_flat_map(parameters)
    return parameters
