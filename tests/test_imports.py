"""The package's import graph: no cycles, and every import points down the layers
commands -> book pipeline / devtools -> engine -> errors, paths (never back).

Layers, from the top: the CLI (cli.py, commands/); the development tools (devtools/: bench,
profiling, the reference runner), which may use the book pipeline as a user of it would; the book
pipeline (every other module: render, renderers, jobs, cache, chunking, manuscript, readers, stitch,
voices, settings...); the engine (engine/), which imports nothing outside itself but errors and
paths; and errors, paths and the package root, which import nothing of the package. The runtime
(book pipeline and engine) never imports the development tools or the reference package
`tortoise`. Imports inside functions count like those at the top: they run too, only later.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tutortoietts"
BASE = {"tutortoietts", "tutortoietts.errors", "tutortoietts.paths"}
LAYER_NAMES = {0: "errors/paths", 1: "engine", 2: "book pipeline", 3: "devtools", 4: "commands"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    if module in BASE:
        return 0
    if module == "tutortoietts.engine" or module.startswith("tutortoietts.engine."):
        return 1
    if module == "tutortoietts.devtools" or module.startswith("tutortoietts.devtools."):
        return 3
    if module in ("tutortoietts.cli", "tutortoietts.__main__") or module.startswith("tutortoietts.commands"):
        return 4
    return 2


def is_runtime(module: str) -> bool:
    return layer(module) in (0, 1, 2)


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against the importer)."""
    if node.level == 0:
        return node.module or ""
    package = importer if MODULES[importer].name == "__init__.py" else importer.rsplit(".", 1)[0]
    for _ in range(node.level - 1):
        package = package.rsplit(".", 1)[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(module: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement in `module`, at any depth.

    `from a.b import c` counts as importing a.b.c when that is a module of the package, else a.b;
    the parent packages Python also initialises are not counted (they would make every package's
    lazy __init__ look like a cycle).
    """
    found = []
    for node in ast.walk(ast.parse(MODULES[module].read_text(), str(MODULES[module]))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((candidate if candidate in MODULES else base, node.lineno))
    return found


def package_graph() -> dict[str, set[str]]:
    return {module: {name for name, _ in imports_of(module) if name in MODULES and name != module} for module in MODULES}


def test_the_walk_sees_the_package():
    """The walk finds the modules and edges it is meant to judge (so an empty graph cannot pass)."""
    graph = package_graph()
    assert {"tutortoietts.render", "tutortoietts.engine.pipeline", "tutortoietts.devtools.bench", "tutortoietts.cli"} <= set(graph)
    assert "tutortoietts.engine.timing" in graph["tutortoietts.engine.pipeline"]  # module-level import
    assert "tutortoietts.engine.pipeline" in graph["tutortoietts.engine"]  # the package's lazy, function-level one
    assert "tutortoietts.settings" in graph["tutortoietts.render"]  # function-level, inside plan_render


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module (each one is a cycle)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles():
    cycles = strongly_connected(package_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(cycle) for cycle in cycles)


def test_cycle_detection_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_imports_point_down_the_layers():
    backward = []
    for module in MODULES:
        for name, line in imports_of(module):
            if name in MODULES and name != module and layer(name) > layer(module):
                backward.append(f"{module}:{line} ({LAYER_NAMES[layer(module)]}) imports {name} ({LAYER_NAMES[layer(name)]})")
    assert not backward, "\n".join(backward)


def test_engine_imports_nothing_of_the_package_but_itself_errors_and_paths():
    outside = [
        f"{module}:{line} imports {name}"
        for module in MODULES if layer(module) == 1
        for name, line in imports_of(module)
        if name.split(".")[0] == "tutortoietts" and layer(name) not in (0, 1)
    ]
    assert not outside, outside


def test_runtime_never_imports_the_devtools_or_the_reference():
    offenders = [
        f"{module}:{line} imports {name}"
        for module in MODULES if is_runtime(module)
        for name, line in imports_of(module)
        if name.split(".")[0] == "tortoise" or name == "tutortoietts.devtools" or name.startswith("tutortoietts.devtools.")
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("target", ["tutortoietts.render", "tutortoietts.engine", "tutortoietts.engine.pipeline"])
def test_importing_the_runtime_loads_no_devtools_and_no_reference(target):
    """A real interpreter: what importing the runtime actually loads (lazy imports and all)."""
    code = f"import {target}, sys; print([m for m in sys.modules if 'devtools' in m or m.startswith('tortoise')])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
