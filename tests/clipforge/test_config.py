"""The config models: params.yaml sets every field, no model carries a default, constraints hold."""

from __future__ import annotations

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from clipforge.config import Count, Params, StudentModelConfig, fields_with_defaults
from clipforge.params_file import load_params
from tests.conftest import REPO


def test_params_yaml_sets_every_field_and_validates() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.profile == "default"
    assert params.synthetic_captions.num_captions == 5
    assert params.teacher_models.mode == "bootstrap"
    # Loading validated every field: the dump has exactly the file's keys, nothing filled in.
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params.model_dump(mode="json") == raw | {"reinforced_dataset": {**raw["reinforced_dataset"]}}


def test_no_config_model_holds_a_default() -> None:
    assert fields_with_defaults(Params) == []


def test_the_defaults_check_finds_a_default_anywhere_in_the_tree() -> None:
    class Inner(BaseModel):
        steps: Count = 3  # the kind of default that would run a value nobody sees

    class Outer(BaseModel):
        name: str
        inner: Inner
        maybe: Inner | None

    assert fields_with_defaults(Outer) == ["inner.steps", "maybe.steps"]


def test_a_section_cannot_be_built_from_code_defaults() -> None:
    with pytest.raises(ValidationError, match="Field required"):
        StudentModelConfig(steps=4)  # type: ignore[call-arg]


def test_profile_overrides_its_base_and_keeps_the_rest() -> None:
    base = load_params(REPO / "params.yaml")
    tiny = load_params(REPO / "profiles" / "tiny.yaml")
    assert tiny.profile == "tiny"
    assert tiny.embedded_corpus.pool_size < base.embedded_corpus.pool_size
    # Keys the profile does not name come from the base file.
    assert tiny.filtered_pool.max_aspect_ratio == base.filtered_pool.max_aspect_ratio
    assert tiny.student_model.lr == base.student_model.lr


def test_set_overrides_are_parsed_as_yaml() -> None:
    params = load_params(
        REPO / "params.yaml", ["student_model.steps=7", "lake.root=s3://b/p", "filtered_pool.require_english=false"]
    )
    assert params.student_model.steps == 7
    assert params.lake.root == "s3://b/p"
    assert params.filtered_pool.require_english is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "embedded_corpus.partial_caption_fraction=0.9",
            r"--set embedded_corpus.partial_caption_fraction=0.9: embedded_corpus: .* caption fractions add up to 1.13 > 1$",
        ),
        ("reinforced_dataset.crop_scale=[0.9, 0.2]", "smallest crop area 0.9 is above the largest 0.2"),
        ("reinforced_dataset.rand_augment_magnitude=31", "must be below rand_augment_bins 31"),
        ("student_model.batch_size=1", "greater than or equal to 2"),
        ("coreml_package.precision=int8", "'float16' or 'float32'"),
    ],
)
def test_cross_field_and_range_rules(override: str, message: str) -> None:
    from clipforge.params_file import ParamsError

    with pytest.raises(ParamsError, match=message):
        load_params(REPO / "params.yaml", [override])
