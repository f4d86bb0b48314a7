"""The package's import graph has no cycles: between modules, and between top-level units.

An AST walk over `src/gptqwen` collects every internal import — at module level, inside functions, under
`if TYPE_CHECKING:`, relative ones, and dynamic ones through `importlib.import_module("gptqwen.x")` — and
turns each into an edge between modules. `from gptqwen.x import y` is an edge to `gptqwen.x.y` when `y` is
a submodule, else to `gptqwen.x` (whose `__init__` then runs). Importing `gptqwen.a.b` also runs the
`__init__` of `gptqwen.a`, but that is not counted as an edge: a package re-exporting its own modules would
otherwise always be a cycle, and the re-exports themselves are edges from the `__init__`.

A top-level unit is a subpackage (`data`, `eval`, `infer`, `model`, ...) or a top module (`hf`, `loading`,
...); the package root `gptqwen/__init__.py` is a unit of its own. Units must form a DAG too, so
dependencies point one way: commands -> (serve, tools, align, eval, train) -> infer -> (model, tokenizer, data) -> ops.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "gptqwen"


def _module_names() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its `__init__`)."""
    modules = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module named by a (possibly relative) `from ... import` statement."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _dynamic_targets(node: ast.AST, modules: dict[str, Path]) -> set[str]:
    """Modules named by strings: `import_module("gptqwen.x")` tables and `f"gptqwen.commands.{verb}"`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value and node.value in modules:
        return {node.value}  # dotted only: a bare "gptqwen" is a package-data anchor (importlib.resources), not code
    if isinstance(node, ast.JoinedStr) and node.values:
        head = node.values[0]
        if isinstance(head, ast.Constant) and isinstance(head.value, str) and head.value.startswith(ROOT + "."):
            prefix = head.value
            return {m for m in modules if m.startswith(prefix) and m != prefix.rstrip(".")}
    return set()


def import_graph() -> dict[str, set[str]]:
    """Module -> the internal modules it imports (anywhere in its body)."""
    modules = _module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, name, is_package)
                targets = {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
            else:
                targets = _dynamic_targets(node, modules)
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def unit(module: str) -> str:
    """`gptqwen.data.io` -> `gptqwen.data`; `gptqwen.hf` -> `gptqwen.hf`; the root stays the root."""
    return ".".join(module.split(".")[:2])


def unit_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    units: dict[str, set[str]] = {}
    for src, targets in graph.items():
        units.setdefault(unit(src), set()).update(unit(t) for t in targets if unit(t) != unit(src))
    return units


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as `[a, b, ..., a]`, or None: an iterative depth-first search with three colours."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def all_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one member (Tarjan), for a complete failure report."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _report(graph: dict[str, set[str]]) -> str:
    lines = []
    for component in all_cycles(graph):
        sub = {m: graph[m] & set(component) for m in component}
        lines.append(" -> ".join(find_cycle(sub) or component) + f"   (strongly connected: {', '.join(component)})")
    return "\n".join(lines)


def test_walk_sees_known_edges():
    """Guard against a walk that silently finds nothing: a few imports that must be seen."""
    graph = import_graph()
    assert len(graph) > 50
    assert "gptqwen.errors" in graph["gptqwen.cli"]
    assert any(m.startswith("gptqwen.commands.") for m in graph["gptqwen.cli"])  # dynamic verb imports
    assert sum(len(v) for v in graph.values()) > 150


def test_find_cycle_on_a_toy_graph():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert all_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_module_import_cycle():
    graph = import_graph()
    assert find_cycle(graph) is None, "import cycles between modules:\n" + _report(graph)


def test_no_cycle_between_top_level_units():
    units = unit_graph(import_graph())
    assert find_cycle(units) is None, "import cycles between top-level units:\n" + _report(units)
