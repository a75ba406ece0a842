"""Render the public JSON Schema files (``schemas/*.json``) from the msgspec types."""

from __future__ import annotations

from pathlib import Path

import msgspec

from looptool.loop.events import SCHEMA_ROOTS


def render() -> dict[str, bytes]:
    """File name -> formatted JSON Schema, one file per public root type."""
    files = {}
    for name, root in SCHEMA_ROOTS.items():
        schema = msgspec.json.schema(root)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = f"LoopTool {name}"
        files[f"{name}.schema.json"] = msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n"
    return files


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in render().items():
        path = directory / name
        path.write_bytes(data)
        written.append(path)
    return written


def stale(directory: Path) -> list[str]:
    """Names of schema files that are missing or differ from what the types say now."""
    return [
        name
        for name, data in render().items()
        if not (directory / name).exists() or (directory / name).read_bytes() != data
    ]
