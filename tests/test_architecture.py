"""Layers read one way: no import cycles (imports inside functions and under TYPE_CHECKING
count), and only the app layer (swamp.app) knows about the command line and rich."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def modules(src: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the `swamp` package under `src`."""
    out = {}
    for path in (src / "swamp").rglob("*.py"):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported(name: str, path: Path) -> set[str]:
    """Every module `name` imports anywhere in its file (ast.walk reaches function bodies and
    `if TYPE_CHECKING:` blocks), with relative imports resolved; `from a import b` counts
    both `a` and `a.b`, since b may be a module."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[:len(package) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def import_graph(src: Path) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (all imports, for the layer rules)."""
    mods = modules(src)
    return {name: imported(name, path) for name, path in mods.items()}


def internal(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges between the package's own modules; a package importing its own children (its
    __init__ re-exporting them) is no cycle with them."""
    return {name: {d for d in deps if d in graph and d != name
                   and not name.startswith(d + ".")}
            for name, deps in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return found


# `python -m swamp` starts the app: the one module outside it allowed to import it.
ENTRY_POINT = "swamp.__main__"


def in_app(name: str) -> bool:
    return name == "swamp.app" or name.startswith("swamp.app.")


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Library modules that import the app layer or rich (the terminal is the app's)."""
    bad = set()
    for name, deps in graph.items():
        if in_app(name) or name == ENTRY_POINT:
            continue
        for dep in deps:
            if in_app(dep):
                bad.add(f"{name} imports swamp.app")
            elif dep == "rich" or dep.startswith("rich."):
                bad.add(f"{name} imports rich")
    return sorted(bad)


@pytest.fixture(scope="module")
def graph():
    return import_graph(SRC)


def test_the_package_has_no_import_cycles(graph):
    assert cycles(internal(graph)) == []


def test_only_the_app_layer_imports_the_app_or_rich(graph):
    assert layer_violations(graph) == []


def test_the_level_loop_does_not_import_the_app(graph):
    assert "swamp.loop" in graph
    assert not any(in_app(d) for d in graph["swamp.loop"])


def test_the_app_owns_the_command_line_and_the_display(graph):
    assert {"swamp.app.cli", "swamp.app.display"} <= set(graph)
    assert not {"swamp.cli", "swamp.display", "swamp.posthoc.commands"} & set(graph)


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "src" / "swamp" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "src"


def test_the_checks_find_a_cycle_made_by_an_import_inside_a_function(tmp_path):
    src = write(tmp_path, {
        "__init__.py": "",
        "a.py": "from swamp import b\n",
        "b.py": "def f():\n    from swamp.c import g\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n",
        "d.py": "import swamp.a\n",
    })
    assert cycles(internal(import_graph(src))) == [["swamp.a", "swamp.b", "swamp.c"]]


def test_the_checks_find_a_library_module_importing_the_app_or_rich(tmp_path):
    src = write(tmp_path, {
        "__init__.py": "",
        "app/__init__.py": "",
        "app/cli.py": "import rich.console\nfrom swamp import loop\n",
        "loop.py": "def show():\n    from swamp.app.cli import main\n",
        "store.py": "from rich.progress import Progress\n",
    })
    assert layer_violations(import_graph(src)) == ["swamp.loop imports swamp.app",
                                                   "swamp.store imports rich"]
