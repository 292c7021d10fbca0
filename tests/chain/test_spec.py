"""The chain's entries name real stage modules, inputs that come earlier, and real params sections."""

from __future__ import annotations

import importlib

from chain.spec import CHAIN, STAGES
from clipforge.config import Params


def test_every_stage_module_has_run_and_quality_suite() -> None:
    for spec in CHAIN:
        module = importlib.import_module(spec.module)
        assert callable(module.run) and callable(module.quality_suite), spec.module
        assert spec.module.rsplit(".", 1)[1] == spec.name  # a stage module is named after its stage


def test_inputs_come_earlier_in_the_chain_and_sections_exist() -> None:
    seen: set[str] = set()
    for spec in CHAIN:
        assert set(spec.inputs) <= seen, f"{spec.name} reads a stage that runs after it"
        assert set(spec.sections) <= set(Params.model_fields), spec.name
        seen.add(spec.name)
    assert list(STAGES) == [spec.name for spec in CHAIN]


def test_the_runner_gives_a_stage_only_its_declared_sections(tmp_path, monkeypatch) -> None:
    # A stage that reads a section it does not declare fails in the runner, before publishing.
    import pytest

    from chain import runner
    from chain.spec import StageSpec
    from clipforge.lake import open_lake
    from clipforge.stage_api import UndeclaredParamsSection
    from tests.conftest import tiny_params_for

    params = tiny_params_for(tmp_path)
    sneaky = StageSpec(
        name="embedded_corpus",
        module="tests.chain.sneaky_stage",
        inputs=(),
        sections=("embedded_corpus",),
        description="reads student_model without declaring it",
    )
    monkeypatch.setitem(runner.STAGES, "embedded_corpus", sneaky)
    with pytest.raises(UndeclaredParamsSection, match="student_model"):
        runner.run_stage("embedded_corpus", params, track=False, report_dir=None, metrics_dir=None)
    assert open_lake(params.lake).published_version("embedded_corpus") is None
