"""The project's import graph, read from the source (every import statement, function-level ones
included), for the checks that mirror it: DVC deps (``chain.dvc_yaml``) and the layer tests.

import-linter (run by the test command) enforces the layers; this module answers the one
question it does not: which project modules a stage's run can import, so that ``dvc.yaml``
depends on exactly those files.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

# The packages whose modules stages can import (assets/ is only Dagster, above them all).
PACKAGES = ("chain", "clipforge", "pipelines", "training", "export")


@dataclass(frozen=True)
class ImportGraph:
    root: Path
    packages: tuple[str, ...] = PACKAGES

    @cached_property
    def files(self) -> dict[str, Path]:
        """Module name -> source file, for every module of the packages."""
        out: dict[str, Path] = {}
        for package in self.packages:
            for path in sorted((self.root / package).rglob("*.py")):
                if "__pycache__" in path.parts:
                    continue
                parts = path.relative_to(self.root).with_suffix("").parts
                name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                out[name] = path
        return out

    def _is_package(self, module: str) -> bool:
        return self.files[module].name == "__init__.py"

    def _with_parents(self, module: str) -> set[str]:
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        parts = module.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & set(self.files)

    def _resolve(self, module: str, node: ast.Import | ast.ImportFrom, *, parents: bool = True) -> set[str]:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if self._is_package(module) else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # "from a import b": b is a submodule, or a name defined in a.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in self.files else base for alias in node.names]
        found: set[str] = set()
        for target in targets:
            while target and target not in self.files:
                target = target.rpartition(".")[0]
            if target:
                found |= self._with_parents(target) if parents else {target}
        return found

    @cached_property
    def _import_nodes(self) -> dict[str, list[ast.Import | ast.ImportFrom]]:
        """Module -> its import statements, anywhere in the file (each file parsed once)."""
        out: dict[str, list[ast.Import | ast.ImportFrom]] = {}
        for module, path in self.files.items():
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            out[module] = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
        return out

    def _graph(self, *, parents: bool) -> dict[str, set[str]]:
        graph: dict[str, set[str]] = {}
        for module, nodes in self._import_nodes.items():
            imported: set[str] = set()
            for node in nodes:
                imported |= self._resolve(module, node, parents=parents)
            graph[module] = imported - {module}
        return graph

    @cached_property
    def edges(self) -> dict[str, set[str]]:
        """Module -> every project module importing it runs: the ones its source names, anywhere in
        the file, and their parent packages (whose ``__init__`` runs first)."""
        return self._graph(parents=True)

    @cached_property
    def named_edges(self) -> dict[str, set[str]]:
        """Module -> the project modules its import statements name (no implicit parents): the
        graph in which to look for cycles between modules and folders."""
        return self._graph(parents=False)

    def folder_edges(self) -> dict[str, set[str]]:
        """Folder -> the other folders its modules name in import statements ("training/models")."""

        def folder(module: str) -> str:
            return self.files[module].parent.relative_to(self.root).as_posix()

        graph: dict[str, set[str]] = {}
        for module, targets in self.named_edges.items():
            graph.setdefault(folder(module), set()).update(folder(t) for t in targets)
        return {name: targets - {name} for name, targets in graph.items()}

    def closure(self, roots: Iterable[str]) -> set[str]:
        """Every project module importing ``roots`` can run (the roots and their parents included)."""
        seen: set[str] = set()
        todo = [m for root in roots for m in self._with_parents(root)]
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            todo.extend(self.edges[module] - seen)
        return seen

    def data_dirs(self, modules: Iterable[str]) -> set[Path]:
        """Folders of non-Python files inside the modules' packages (e.g. open_clip model configs)."""
        out: set[Path] = set()
        for module in modules:
            if not self._is_package(module):
                continue
            for child in self.files[module].parent.iterdir():
                if child.is_dir() and child.name != "__pycache__" and not (child / "__init__.py").exists():
                    out.add(child)
        return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found
