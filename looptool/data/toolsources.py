"""A team's own tools, as LoopTool tool specs: an MCP server, an OpenAPI 3 document, or a file of
tool schemas — what ``looptool synthesize`` writes seed data for.

- **MCP** (the official ``mcp`` SDK): a stdio command (``python server.py``) or a streamable-HTTP
  URL; ``tools/list`` gives the tools (every page), ``tools/call`` runs a call — the execution
  stage of synthesis.
- **OpenAPI 3** (JSON or YAML): each operation is a tool named by its ``operationId`` (else
  ``<method>_<path>``); path, query, header and cookie parameters and a JSON request body
  (``body``) become its JSON Schema, local ``$ref``s resolved.
- **A tool file** (JSON or JSONL, optionally gzipped): OpenAI tools ``{"type": "function",
  "function": {...}}``, bare functions ``{"name", "description", "parameters"}`` (xLAM's flat
  parameter maps included), or rows with a ``tools`` list.

A spec LoopTool cannot use is refused naming the operation or tool and the field.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from looptool.data.formats._common import RowError, RowRejected, read_bytes, read_rows, tools_from
from looptool.data.samples import ToolCall, ToolSpec
from looptool.kernel.errors import LoopToolError

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_NAME = re.compile(r"[^A-Za-z0-9-]+")  # runs of anything else (slashes, braces, underscores) -> one "_"


class ToolSourceError(LoopToolError, ValueError):
    pass


class CallOutcome(msgspec.Struct, frozen=True):
    ok: bool
    text: str  # the result's text, or the error


# --------------------------------------------------------------------------- MCP


def _mcp() -> Any:
    try:
        import mcp
    except ImportError:
        raise ToolSourceError("MCP servers need the mcp SDK: pip install 'looptool[synthesis]'") from None
    return mcp


def mcp_server(spec: str) -> Any:
    """What ``mcp.Client`` connects to: a URL as is, anything else a command line (stdio)."""
    if spec.startswith(("http://", "https://")):
        return spec
    StdioServerParameters = _mcp().StdioServerParameters

    command = shlex.split(spec)
    if not command:
        raise ToolSourceError("an empty MCP server command")
    return StdioServerParameters(command=command[0], args=command[1:])


class McpTools:
    """A connected MCP server: its tools, and calls run on it. ``async with McpTools(spec)``."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._client = _mcp().Client(mcp_server(spec))

    async def __aenter__(self) -> McpTools:
        await self._client.__aenter__()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self._client.__aexit__(kind, error, trace)

    async def tools(self) -> list[ToolSpec]:
        listed: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = await self._client.list_tools(cursor=cursor)
            listed += [
                {"name": t.name, "description": t.description or "", "parameters": _without_titles(t.input_schema)}
                for t in page.tools
            ]
            cursor = page.next_cursor
            if not cursor:
                break
        return _tools(listed, f"MCP server {self.spec!r}")

    async def call(self, call: ToolCall) -> CallOutcome:
        result = await self._client.call_tool(call.name, dict(call.arguments))
        text = "\n".join(getattr(part, "text", "") or "" for part in result.content)
        return CallOutcome(not result.is_error, text)


# --------------------------------------------------------------------------- OpenAPI


class Operation(msgspec.Struct, frozen=True):
    """One OpenAPI operation: its tool, and where each of the tool's arguments goes."""

    tool: dict[str, Any]
    method: str
    route: str
    locations: dict[str, str]  # argument -> "path" | "query" | "header" | "cookie" | "body"


def openapi_tools(path: str | Path) -> list[ToolSpec]:
    """Every operation of an OpenAPI 3 document as a tool."""
    return _tools([operation.tool for operation in openapi_operations(path)], str(path))


class OpenApiTools:
    """Calls run against the API an OpenAPI document describes, at a base URL the user allows:
    an HTTP status of 400 or more is an error result. ``async with OpenApiTools(doc, url)``."""

    def __init__(self, document: str | Path | list[Operation], base_url: str, timeout: float = 30.0) -> None:
        """``document``: the OpenAPI document's path, or its operations (:func:`openapi_operations`)."""
        import httpx

        operations = document if isinstance(document, list) else openapi_operations(document)
        self.operations = {operation.tool["name"]: operation for operation in operations}
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)

    async def __aenter__(self) -> OpenApiTools:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def call(self, call: ToolCall) -> CallOutcome:
        from urllib.parse import quote

        operation = self.operations.get(call.name)
        if operation is None:
            return CallOutcome(False, f"no operation {call.name}")
        route, query, headers, cookies, body = operation.route, {}, {}, {}, None
        for name, value in call.arguments.items():
            where = operation.locations.get(name, "query")
            if where == "path":
                route = route.replace("{" + name + "}", quote(str(value), safe=""))
            elif where == "header":
                headers[name] = str(value)
            elif where == "cookie":  # sent as the header itself: httpx deprecates per-request cookies
                cookies[name] = str(value)
            elif where == "body":
                body = value
            else:
                query[name] = value if isinstance(value, (str, int, float)) else msgspec.json.encode(value).decode()
        if cookies:
            headers["Cookie"] = "; ".join(f"{k}={quote(v, safe='')}" for k, v in cookies.items())
        response = await self._http.request(operation.method.upper(), route, params=query, headers=headers, json=body)
        return CallOutcome(response.status_code < 400, f"HTTP {response.status_code}: {response.text[:2000]}")


def openapi_operations(path: str | Path) -> list[Operation]:
    document = _load_document(Path(path))
    if not isinstance(document, dict) or not str(document.get("openapi", "")).startswith("3"):
        raise ToolSourceError(f"{path}: not an OpenAPI 3 document (no 'openapi: 3.x' field)")
    operations = []
    for route, item in (document.get("paths") or {}).items():
        if isinstance(item, dict) and "$ref" in item:  # a path item kept elsewhere (its operations resolve below)
            item = _resolved(document, {"$ref": item["$ref"]}, f"paths.{route}")
        shared = item.get("parameters", [])
        for method in HTTP_METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            where = f"{path}: {method.upper()} {route}"
            try:
                operations.append(_operation(document, method, route, operation, shared))
            except ToolSourceError as exc:
                raise ToolSourceError(f"{where} ({operation.get('operationId', 'no operationId')}): {exc}") from None
    return operations


def _operation(
    document: dict[str, Any], method: str, route: str, operation: dict[str, Any], shared: list[Any]
) -> Operation:
    name = operation.get("operationId") or f"{method}_{route}"
    properties: dict[str, Any] = {}
    required: list[str] = []
    by_key = {}
    for index, raw in enumerate([*shared, *operation.get("parameters", [])]):
        parameter = _resolved(document, raw, f"parameters[{index}]")
        if "name" not in parameter or "in" not in parameter:
            raise ToolSourceError(f"parameters[{index}]: a parameter needs 'name' and 'in'")
        by_key[(parameter["name"], parameter["in"])] = parameter  # an operation's own wins
    for (pname, location), parameter in by_key.items():
        schema = _resolved(document, parameter.get("schema", {"type": "string"}), f"parameters.{pname}.schema")
        description = parameter.get("description") or schema.get("description") or f"{location} parameter"
        properties[pname] = {**schema, "description": description}
        if parameter.get("required") or location == "path":
            required.append(pname)
    body = operation.get("requestBody")
    if body is not None:
        body = _resolved(document, body, "requestBody")
        content = body.get("content", {})
        media = next((m for m in content if m == "application/json" or m.endswith("+json")), None)
        if media is None:
            raise ToolSourceError(f"requestBody: no JSON content (has {sorted(content)})")
        properties["body"] = _resolved(document, content[media].get("schema", {}), "requestBody.schema")
        if body.get("required"):
            required.append("body")
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    description = operation.get("summary") or operation.get("description") or f"{method.upper()} {route}"
    tool = {"name": _NAME.sub("_", name).strip("_")[:64], "description": description, "parameters": parameters}
    locations = {pname: location for pname, location in by_key} | ({"body": "body"} if body is not None else {})
    return Operation(tool, method, route, locations)


def _resolved(document: dict[str, Any], node: Any, where: str, seen: tuple[str, ...] = ()) -> Any:
    """``node`` with every local ``$ref`` replaced by what it points at (a cycle is refused)."""
    if isinstance(node, list):
        return [_resolved(document, item, f"{where}[{i}]", seen) for i, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        if not ref.startswith("#/"):
            raise ToolSourceError(f"{where}: $ref {ref!r} is not in this document")
        if ref in seen:
            raise ToolSourceError(f"{where}: $ref {ref!r} refers to itself ({' -> '.join([*seen, ref])})")
        target: Any = document
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise ToolSourceError(f"{where}: $ref {ref!r} names nothing")
            target = target[part]
        return _resolved(document, target, where, (*seen, ref))
    return {key: _resolved(document, value, f"{where}.{key}", seen) for key, value in node.items()}


def _load_document(path: Path) -> Any:
    data = read_bytes(path)
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        pass
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        raise ToolSourceError(
            f"{path}: not JSON, and reading YAML needs pyyaml: pip install 'looptool[synthesis]'"
        ) from None
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ToolSourceError(f"{path}: neither JSON nor YAML: {exc}") from None


# --------------------------------------------------------------------------- tool files


def file_tools(path: str | Path) -> list[ToolSpec]:
    """The tools of a JSON/JSONL file: one tool a row, or rows with a ``tools`` list."""
    listed: list[Any] = []
    for _, row in read_rows(path):
        if isinstance(row, RowError):
            raise ToolSourceError(str(row))
        if isinstance(row, dict) and "tools" in row:
            tools = row["tools"]
            listed += msgspec.json.decode(tools) if isinstance(tools, str) else tools
        else:
            listed += row if isinstance(row, list) else [row]
    unique = {_name_of(t): t for t in listed}  # a tool repeated across rows is one tool
    return _tools(list(unique.values()), str(path))


def _name_of(tool: Any) -> str:
    function = tool.get("function", tool) if isinstance(tool, dict) else {}
    return str(function.get("name", "")) if isinstance(function, dict) else ""


# --------------------------------------------------------------------------- shared


def _tools(raw: list[Any], origin: str) -> list[ToolSpec]:
    try:
        tools = tools_from(raw, "tools")
    except RowRejected as exc:
        index = exc.field.removeprefix("tools")
        name = next(iter(_names(raw, index)), "")
        raise ToolSourceError(f"{origin}: tool {name or exc.field}: {exc.reason}") from None
    if not tools:
        raise ToolSourceError(f"{origin}: no tools")
    return tools


def _names(raw: list[Any], index: str) -> Iterator[str]:
    if index.startswith("[") and index.endswith("]") and index[1:-1].isdigit():
        yield _name_of(raw[int(index[1:-1])])


def _without_titles(schema: Any) -> Any:
    """An MCP input schema without pydantic's generated ``title`` keys (noise to a model)."""
    if isinstance(schema, dict):
        return {k: _without_titles(v) for k, v in schema.items() if not (k == "title" and isinstance(v, str))}
    if isinstance(schema, list):
        return [_without_titles(v) for v in schema]
    return schema
