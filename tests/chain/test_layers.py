"""The layers of docs/architecture.md hold: import-linter's contracts, no folder or module cycle,
and a stage layer that lists exactly the chain's stage modules.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from chain.imports import PACKAGES, ImportGraph, cycles
from chain.spec import CHAIN
from tests.conftest import REPO

ALL_PACKAGES = (*PACKAGES, "assets")


def _contracts(root: Path = REPO) -> dict[str, dict]:
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["id"]: contract for contract in config["contracts"]}


def _layer_modules(layer: str) -> set[str]:
    return {name.strip() for name in layer.replace("|", ":").split(":") if name.strip()}


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    # import-linter finds the packages on sys.path: run it from the tree it checks.
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent)},
        check=False,
    )


def _copy_tree(dst: Path) -> Path:
    for package in ALL_PACKAGES:
        shutil.copytree(REPO / package, dst / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_the_contracts_hold_on_the_tree() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "contract"),
    [
        # The runtime base reaching up into a library, from inside a function.
        ("clipforge/files.py", "def _late():\n    from training.optim import cosine_lr  # noqa\n", "Folders in order"),
        # training/ reaching sideways into export/.
        ("training/optim/__init__.py", "import export.parity  # noqa\n", "Folders in order"),
        # A library importing a stage module.
        ("pipelines/pool/filters.py", "from pipelines import datacomp_pool  # noqa\n", "Stage modules"),
        # Dagster outside assets/.
        ("chain/runner.py", "def _late():\n    import dagster  # noqa\n", "Only assets/ imports Dagster"),
    ],
)
def test_an_import_against_the_layers_breaks_the_check(
    tmp_path: Path, module: str, statement: str, contract: str
) -> None:
    root = _copy_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text() + "\n\n" + statement)
    result = _lint(root)
    assert result.returncode != 0
    assert "1 broken" in result.stdout
    broken = result.stdout[result.stdout.index("Broken contracts") :]
    assert contract in broken


def test_no_two_folders_import_each_other_and_no_module_cycle() -> None:
    graph = ImportGraph(REPO, ALL_PACKAGES)
    assert cycles(graph.named_edges) == []
    assert cycles(graph.folder_edges()) == []
    # The graph sees function-level imports (the runner loads stages by name, not by import).
    assert "clipforge.registry" in graph.named_edges["training.evaluation"]


def test_cycle_finder_finds_cycles() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_stage_layer_is_the_chain_and_every_module_has_a_layer() -> None:
    stages_layer, libraries_layer = _contracts()["stages"]["layers"]
    stage_modules, library_modules = _layer_modules(stages_layer), _layer_modules(libraries_layer)
    assert stage_modules == {spec.module for spec in CHAIN}
    children = {
        f"{folder}.{path.stem if path.suffix == '.py' else path.name}"
        for folder in ("pipelines", "training", "export")
        for path in (REPO / folder).iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()
    }
    assert stage_modules | library_modules == children
    assert not stage_modules & library_modules
