"""dvc.yaml is generated from the chain and covers every file each stage's run imports."""

from __future__ import annotations

import copy

import yaml

from chain import dvc_yaml
from chain.imports import ImportGraph
from chain.spec import CHAIN
from tests.conftest import REPO


def _committed() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_committed_dvc_yaml_is_what_the_chain_generates() -> None:
    assert (REPO / "dvc.yaml").read_text() == dvc_yaml.render(), "run `python -m chain.dvc_yaml`"
    assert dvc_yaml.main(["--check"]) == 0


def test_every_stage_depends_on_its_import_closure() -> None:
    assert dvc_yaml.problems(_committed()) == []
    stages = _committed()["stages"]
    assert list(stages) == [spec.name for spec in CHAIN]
    graph = ImportGraph(REPO)
    for spec in CHAIN:
        stage = stages[spec.name]
        assert stage["cmd"] == f"clipforge {spec.name} --no-progress"
        assert stage["params"] == list(spec.sections)
        assert stage["outs"] == [{f"lake/{spec.name}": {"persist": False}}]
        module_file = graph.files[spec.module].relative_to(REPO).as_posix()
        assert module_file in stage["deps"]
        assert {d.removeprefix("lake/") for d in stage["deps"] if d.startswith("lake/")} == set(spec.inputs)
        for dep in stage["deps"]:
            assert dep.startswith("lake/") or (REPO / dep).exists(), f"{spec.name}: {dep} does not exist"
    assert stages["evaluation"]["metrics"] == [{"metrics/evaluation.json": {"cache": False}}]


def test_the_closure_follows_function_level_imports() -> None:
    # filtered_pool imports the open_clip model folders at module level; evaluation promotes through
    # clipforge.registry, and the model configs are data its packages read.
    deps = {spec.name: set(dvc_yaml.code_deps(spec.module, ImportGraph(REPO))) for spec in CHAIN}
    assert "training/models/open_clip_models.py" in deps["filtered_pool"]
    assert "training/models/model_configs" in deps["filtered_pool"]
    assert "export/parity.py" in deps["reparameterized_model"]
    assert "clipforge/registry.py" in deps["evaluation"]
    # Nothing of a stage's downstream leaks in: ingestion does not run the trainers.
    assert not any(d.startswith(("training/trainers", "export/")) for d in deps["datacomp_pool"])


def test_a_broken_copy_is_reported_by_stage_and_file() -> None:
    broken = copy.deepcopy(_committed())
    deps = broken["stages"]["reparameterized_model"]["deps"]
    deps.remove("export/parity.py")
    broken["stages"]["student_model"]["params"] = []
    broken["stages"]["coreml_package"]["deps"] = [
        d for d in broken["stages"]["coreml_package"]["deps"] if d != "lake/reparameterized_model"
    ]
    found = dvc_yaml.problems(broken)
    assert "reparameterized_model: does not depend on export/parity.py, which its run imports or reads" in found
    assert "student_model: does not declare params section 'student_model'" in found
    assert "coreml_package: does not depend on its input lake/reparameterized_model" in found
    assert len(found) == 3
    # A folder dep covers the files under it (hand-written dvc.yaml files may use folders).
    deps.append("export")
    assert not [p for p in dvc_yaml.problems(broken) if p.startswith("reparameterized_model")]
