"""The layering rules of the repo, and a checker that reads every module's imports (imports inside functions and
the lazy ``"package.module:attribute"`` targets of the registries included) and reports what breaks them.

    python tests/layers.py [ROOT]        # prints every violation; exit 1 if there is one

Layers, lowest first (``videolab/__init__.py`` says the same in words):

=====================  =====================================================================================
module                 may import (repo modules only; the standard library and installed packages are free)
=====================  =====================================================================================
videolab.core.*        videolab.core
videolab.data.*        videolab.core, videolab.data
videolab.models.*      videolab.core, videolab.models
videolab.evaluation.*  videolab.core, videolab.data, videolab.evaluation
videolab.tasks.*       videolab.core, videolab.data, videolab.models, videolab.evaluation, videolab.export,
                       videolab.tasks
videolab.export.*      videolab.core, videolab.models, videolab.export
videolab.cli           videolab.core and the names it lists (videolab.{data,models,tasks}.registry, data.sampling)
assemblers             the package (build_model.py, VLoader.py, train_code.py: never each other, never a script)
scripts                the package and the assemblers (main.py, inference.py, dummy_data.py, create_dummy.py,
                       apps/*.py: nothing imports a script)
=====================  =====================================================================================

Besides: no import circles (lazy registry targets count as imports); the modules the command line reads before
anything else (``LIGHT``) import no torch, so ``--help`` is instant (checked by importing them in a fresh process).
"""
from __future__ import annotations

import ast
import os
import re
import sys
from dataclasses import dataclass

SKIP_DIRS = {"tests", "benchmarks", "docs", "checkpoints", "build", "dist", "__pycache__", "results"}
ASSEMBLERS = {"build_model", "VLoader", "train_code"}
SCRIPTS = {"main", "inference", "dummy_data", "create_dummy"}  # and every module under apps/
PACKAGE_RULES = {  # package layer -> the layers it may import
    "core": {"core"},
    "data": {"core", "data"},
    "models": {"core", "models"},
    "evaluation": {"core", "data", "evaluation"},
    "tasks": {"core", "data", "models", "evaluation", "export", "tasks"},
    "export": {"core", "models", "export"},
}
CLI_MAY_IMPORT = ("videolab.core", "videolab.data.registry", "videolab.data.sampling", "videolab.models.registry",
                  "videolab.tasks.registry")
LIGHT = ("videolab.cli", "videolab.core.settings", "videolab.core.registry", "videolab.core.errors",
         "videolab.data.registry", "videolab.data.sampling", "videolab.models.registry", "videolab.tasks.registry")
LAZY_TARGET = re.compile(r"^(videolab(?:\.\w+)+):\w+$")


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported repo module
    line: int
    lazy: bool = False  # a registry's "module:attribute" target


def find_modules(root: str) -> dict[str, str]:
    """Dotted module name -> file, for every .py file of the repo outside tests, benchmarks, docs and hidden
    folders (a package's __init__.py is the package's name)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in files:
            if name.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                if parts:
                    found[".".join(parts)] = os.path.join(folder, name)
    return found


def _resolve(name: str, known: dict) -> str | None:
    """The repo module a dotted import names (``a.b.c`` -> ``a.b`` when c is an attribute), or None."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def read_edges(module: str, path: str, known: dict) -> list[Edge]:
    """Every repo import of ``module``: module level and inside functions, relative ones, lazy targets."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    edges = []

    def add(name: str, line: int, lazy: bool = False) -> None:
        target = _resolve(name, known)
        if target and target != module:
            edges.append(Edge(module, target, line, lazy))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                full = f"{base}.{alias.name}" if base else alias.name
                add(full if full in known else base, node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = LAZY_TARGET.match(node.value)
            if match:
                add(match.group(1), node.lineno, lazy=True)
    return edges


def group_of(module: str) -> str:
    """'package:<layer>', 'cli', 'assembler', 'script' or 'other'."""
    parts = module.split(".")
    if parts[0] == "videolab":
        if len(parts) == 1:
            return "package:init"
        if parts[1] == "cli":
            return "cli"
        return f"package:{parts[1]}"
    if module in ASSEMBLERS:
        return "assembler"
    if module in SCRIPTS or parts[0] == "apps":
        return "script"
    return "other"


def forbidden(edge: Edge) -> str | None:
    """Why ``edge`` breaks a rule, or None."""
    source, target = group_of(edge.source), group_of(edge.target)
    if target == "script":
        return "nothing imports a script"
    if source.startswith("package") or source == "cli":
        if not target.startswith("package"):
            return "the package never imports a top-level file"
    if source == "cli":
        return None if edge.target.startswith(CLI_MAY_IMPORT) else \
            f"the command line imports only core and the registries ({', '.join(CLI_MAY_IMPORT)})"
    if source.startswith("package:") and target.startswith("package:"):
        layer, other = source.split(":")[1], target.split(":")[1]
        if layer == "init":
            return "videolab/__init__.py imports nothing"
        allowed = PACKAGE_RULES.get(layer)
        if allowed is not None and other not in allowed:
            return f"videolab.{layer} may import only {', '.join('videolab.' + a for a in sorted(allowed))}"
    if source == "assembler" and target == "assembler":
        return "the assemblers (build_model, VLoader, train_code) do not import each other"
    return None


def circles(graph: dict[str, set]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, result, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                result.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


def check(root: str) -> list[str]:
    """Every violation of the layering rules under ``root``, one line each (empty: the house is in order)."""
    known = find_modules(root)
    edges = [e for module, path in sorted(known.items()) for e in read_edges(module, path, known)]
    problems = [f"{e.source} -> {e.target} (line {e.line}{', lazy registry target' if e.lazy else ''}): {why}"
                for e in edges for why in [forbidden(e)] if why]
    graph: dict[str, set] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
    problems += [f"import circle: {' -> '.join(group)}" for group in circles(graph)]
    return problems


if __name__ == "__main__":
    found = check(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    print("\n".join(found) if found else "layers: no violation")
    sys.exit(1 if found else 0)
