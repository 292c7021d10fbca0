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
