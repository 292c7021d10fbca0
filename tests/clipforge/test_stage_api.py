"""The stage contract: a stage reads only the params sections its chain entry declares."""

from __future__ import annotations

import pytest

from clipforge.stage_api import DeclaredParams, UndeclaredParamsSection
from tests.conftest import default_params


def test_declared_sections_read_through_and_others_raise() -> None:
    params = default_params()
    view = DeclaredParams(params, "reinforced_dataset", ("reinforced_dataset", "synthetic_captions"))
    assert view.reinforced_dataset == params.reinforced_dataset
    assert view.synthetic_captions.num_captions == params.synthetic_captions.num_captions
    assert view.profile == params.profile  # the profile name is not a section
    with pytest.raises(
        UndeclaredParamsSection, match=r"stage 'reinforced_dataset' reads params section 'student_model'"
    ):
        _ = view.student_model
    with pytest.raises(AttributeError):
        _ = view.no_such_field
