"""No import cycle among the package's modules.

The graph holds every import a module makes, at module level or inside a
function (a lazy import still ties the two modules together), of another
module of the package; package ``__init__`` files count as modules. The
folders installed under the ``mmopt`` namespace (``scorers/`` as
``mmopt.scorers``, ...) are read from pyproject.toml's package-dir table.
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_modules() -> dict[str, Path]:
    """Module name -> file, for every .py file of the distribution."""
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    modules = {}
    for package, folder in dirs.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (``from x import y`` counts x.y when that is a module)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                head = base[: len(base) - node.level + 1]
                mod = ".".join(head + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            # "import mmopt.scorers.clip" also imports its parent packages: their __init__ runs first
            while t:
                if t in known and t != name:
                    found.add(t)
                t = t.rpartition(".")[0]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    modules = package_modules()
    known = set(modules)
    # a package importing its own submodules (an __init__ re-exporting) is not a cycle of two modules;
    # the submodule importing the package back would be, and is kept
    graph = {name: imports_of(name, path, known) for name, path in modules.items()}
    graph = {name: {t for t in deps if not (path.name == "__init__.py" and t.startswith(name + "."))}
             for (name, path), deps in zip(modules.items(), graph.values())}
    assert len(modules) > 40
    assert cycles(graph) == []
