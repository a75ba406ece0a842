"""The layers, as an import graph: each layer imports only the layers below it.

kernel < data < llm < loop < (services, app); services never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "looptool"
ORDER = ["kernel", "data", "llm", "loop", "services", "app"]
ALLOWED = {
    "kernel": {"kernel"},
    "data": {"kernel", "data"},
    "llm": {"kernel", "data", "llm"},
    "loop": {"kernel", "data", "llm", "loop"},
    "services": {"kernel", "data", "llm", "loop"},  # and never another service
    "app": {"kernel", "data", "llm", "loop", "app", "services"},
}


def imports_of(path: Path) -> set[str]:
    """Every ``looptool.*`` module a file imports, also inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("looptool")}
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("looptool")
        ):
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; use absolute ones so the layer shows")
    return found


def layer_files() -> list[tuple[str, Path]]:
    return [(layer, path) for layer in ORDER for path in sorted((PACKAGE / layer).rglob("*.py"))]


@pytest.mark.parametrize(
    ("layer", "path"), layer_files(), ids=lambda v: str(v.relative_to(PACKAGE)) if isinstance(v, Path) else v
)
def test_a_module_imports_only_the_layers_below(layer: str, path: Path) -> None:
    for module in imports_of(path):
        parts = module.split(".")
        target = parts[1] if len(parts) > 1 else ""
        assert target in ALLOWED[layer], f"{path.relative_to(PACKAGE)} ({layer}) imports {module}"
        if layer == "services" and target == "services":
            raise AssertionError(f"{path.relative_to(PACKAGE)} imports another service: {module}")


def test_every_module_lives_in_a_layer() -> None:
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert loose == []


def test_the_checker_finds_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from looptool.loop.ledger import RunLedger\n")
    assert "looptool.loop.ledger.RunLedger" in imports_of(bad)


def module_graph() -> dict[str, set[str]]:
    """Module -> the LoopTool modules it imports (``from m import name`` counts as m, or as
    ``m.name`` where that is a module)."""
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts) for _, p in layer_files()}
    graph: dict[str, set[str]] = {}
    for _, path in layer_files():
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        graph[name] = {m if m in modules else m.rpartition(".")[0] for m in imports_of(path)} & modules - {name}
    return graph


def test_no_module_imports_itself_through_others() -> None:
    graph = module_graph()
    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            module, path = stack.pop()
            for target in graph.get(module, ()):
                if target == start:
                    cycles.append(" -> ".join([*path, start]))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
    assert cycles == []
