"""Package boundaries (docs/CONTRACTS.md, "Package boundaries"), checked by parsing every module's imports.

:func:`check_imports` reads each ``.py`` file of the checked packages with :mod:`ast` (nothing is imported or
run), collects every import -- module level, inside functions and methods, under ``if TYPE_CHECKING:``, and
``importlib.import_module("literal")`` calls -- resolves relative imports, and reports:

* a module importing one of our packages its package may not import (:data:`RULES`);
* every import cycle between our modules (strongly connected components of the module graph; an edge goes
  to the most specific module of ours an import names: ``from a.b import c`` is ``a.b.c`` when that is a
  module, else ``a.b``; importing ``a.b.c`` is not counted as importing the package ``a`` itself, so a
  package ``__init__`` re-exporting its own submodules is not a cycle).

The test on the repository runs it on the real tree; :func:`test_checker_reports_each_kind_of_violation`
runs it on a small synthetic tree that breaks every rule, so the checker is shown to fail when it should.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PACKAGES: tuple[str, ...] = ("engine", "scenes", "installation", "training", "datastore", "benchmarks")
"""Our top-level packages whose modules are checked (plus the top-level modules of :data:`MODULES`)."""
MODULES: tuple[str, ...] = ("run",)
"""Our top-level single-file modules that are checked (``run.py``)."""

RULES: dict[str, tuple[str, ...]] = {
    "engine": ("engine",),
    "scenes": ("scenes",),
    "installation": ("installation", "engine", "scenes", "datastore"),
    "datastore": ("datastore", "engine.errors"),
}
"""Package -> the only modules of ours it may import (a name covers its submodules). Packages not listed
(``training``, ``benchmarks``, ``run``) may import anything of ours."""


@dataclass(frozen=True)
class Violation:
    """One broken rule: ``kind`` ``"forbidden"`` (``module`` imports ``target`` at ``line``) or ``"cycle"``
    (``members``: the modules of one strongly connected component, sorted; ``cycle``: one shortest cycle
    through its first module, closed (``a -> b -> a``); ``module``/``target``/``line``: its first edge)."""

    kind: str
    module: str
    target: str
    line: int
    cycle: tuple[str, ...] = ()
    members: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.kind == "cycle":
            others = sorted(set(self.members) - set(self.cycle))
            more = f" (the cycle also runs through {', '.join(others)})" if others else ""
            return (
                f"import cycle between {len(self.members)} modules: {' -> '.join(self.cycle)} "
                f"({self.module} line {self.line}){more}"
            )
        return f"{self.module} imports {self.target} (line {self.line}): not allowed for its package"


def module_files(root: Path, packages: Iterable[str], modules: Iterable[str]) -> dict[str, Path]:
    """Module name -> file for every ``.py`` under ``root/<package>`` and each ``root/<module>.py`` that exists."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    for module in modules:
        path = root / f"{module}.py"
        if path.is_file():
            found[module] = path
    return found


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """``(absolute dotted name, line)`` for every import in ``tree`` (all nesting levels).

    ``from X import a, b`` yields ``X.a`` and ``X.b`` (the caller maps them to a module: ``X.a`` if that is a
    module, else ``X``)."""
    package = module if is_package else module.rpartition(".")[0]
    names: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base_parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                names.append((f"{base}.{alias.name}" if alias.name != "*" else base, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
        ):
            names.append((node.args[0].value, node.lineno))
    return names


def import_graph(files: Mapping[str, Path]) -> dict[str, list[tuple[str, int]]]:
    """Module -> ``[(imported module of ours, line), ...]`` (sorted, first line per target; no self-edges)."""
    graph: dict[str, list[tuple[str, int]]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: dict[str, int] = {}
        for name, line in _imported_names(tree, module, path.name == "__init__.py"):
            target = name
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != module:
                edges.setdefault(target, line)
        graph[module] = sorted(edges.items())
    return graph


def _allowed(target: str, allowed: Iterable[str]) -> bool:
    return any(target == a or target.startswith(a + ".") for a in allowed)


def _components(graph: Mapping[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(t for t, _ in graph.get(start, [])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(t for t, _ in graph.get(child, []))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return sorted(out)


def _one_cycle(component: list[str], graph: Mapping[str, list[tuple[str, int]]]) -> list[str]:
    """A shortest cycle through the first module of ``component`` (breadth-first inside it), closed."""
    members = set(component)
    start = component[0]
    parent: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target, _ in graph.get(node, []):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if target in members and target not in parent:
                parent[target] = node
                queue.append(target)
    return [*component, start]  # pragma: no cover - a component always has a cycle through each member


def check_imports(
    root: Path,
    packages: Iterable[str] = PACKAGES,
    modules: Iterable[str] = MODULES,
    rules: Mapping[str, Iterable[str]] = RULES,
) -> list[Violation]:
    """Every rule broken under ``root``: forbidden imports (per :data:`RULES`), then cycles (see the module docstring).

    Args:
        root: the repository root (holds the packages and ``run.py``).
        packages, modules: what to check (default :data:`PACKAGES`, :data:`MODULES`).
        rules: package -> modules of ours it may import (default :data:`RULES`).
    """
    files = module_files(root, packages, modules)
    graph = import_graph(files)
    violations: list[Violation] = []
    for module, edges in sorted(graph.items()):
        allowed = rules.get(module.split(".")[0])
        if allowed is None:
            continue
        for target, line in edges:
            if not _allowed(target, allowed):
                violations.append(Violation("forbidden", module, target, line))
    for component in _components(graph):
        cycle = _one_cycle(component, graph)
        line = dict(graph[cycle[0]])[cycle[1]]
        violations.append(Violation("cycle", cycle[0], cycle[1], line, tuple(cycle), tuple(component)))
    return violations


def test_package_boundaries() -> None:
    violations = [v for v in check_imports(ROOT) if v.kind == "forbidden"]
    assert not violations, "package boundaries broken:\n" + "\n".join(f"  {v}" for v in violations)


def test_no_import_cycles() -> None:
    violations = [v for v in check_imports(ROOT) if v.kind == "cycle"]
    assert not violations, "import cycles:\n" + "\n".join(f"  {v}" for v in violations)


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_checker_reports_each_kind_of_violation(tmp_path: Path) -> None:
    """A synthetic tree breaking every rule once (plus allowed imports that must not be reported)."""
    _write(
        tmp_path,
        {
            "engine/__init__.py": "from engine.core import run  # own package: allowed\n",
            "engine/core.py": "def run():\n    import training  # function-local, still forbidden\n",
            "engine/errors.py": "class UserError(Exception):\n    pass\n",
            "scenes/__init__.py": "",
            "scenes/grid.py": "from . import base\nimport installation.capture\n",
            "scenes/base.py": "from ..installation import params\n",
            "installation/__init__.py": "",
            "installation/live.py": (
                "import engine.core\nimport scenes.grid\nfrom datastore import jsonl\n"
                "from .capture import x\n"
                "def f():\n    import training.generate\n"
            ),
            "installation/capture.py": "x = 1\ndef g():\n    from installation import screen\n",
            "installation/screen.py": "from installation.capture import x\n",
            "installation/params.py": "",
            "datastore/__init__.py": "",
            "datastore/jsonl.py": "from engine.errors import UserError\nfrom engine import core\n",
            "training/__init__.py": "",
            "training/loop.py": "import importlib\nm = importlib.import_module('training.generate')\n",
            "training/generate.py": "from training.loop import m\nimport installation.params  # training may\n",
            "run.py": "import importlib\nimportlib.import_module('installation.live')\n",
        },
    )
    violations = check_imports(tmp_path)
    forbidden = {(v.module, v.target) for v in violations if v.kind == "forbidden"}
    assert forbidden == {
        ("engine.core", "training"),
        ("scenes.grid", "installation.capture"),
        ("scenes.base", "installation.params"),
        ("installation.live", "training.generate"),
        ("datastore.jsonl", "engine.core"),
    }
    cycles = {frozenset(v.cycle) for v in violations if v.kind == "cycle"}
    assert cycles == {
        frozenset({"installation.capture", "installation.screen"}),
        frozenset({"training.loop", "training.generate"}),
    }
    text = "\n".join(map(str, violations))
    assert "installation.live imports training.generate (line 6)" in text
    assert (
        "import cycle between 2 modules: installation.capture -> installation.screen -> installation.capture "
        "(installation.capture line 3)"
    ) in text
