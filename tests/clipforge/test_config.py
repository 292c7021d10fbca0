from pathlib import Path

import pytest
from pydantic import ValidationError

from clipforge.config import apply_overrides, load_params, parse_override

ROOT = Path(__file__).resolve().parents[1]


def test_default_params_file_validates():
    params = load_params(ROOT / "params.yaml")
    assert params.profile == "default"
    assert params.synthetic_captions.num_captions == 5
    assert params.teacher_models.mode == "bootstrap"


def test_profile_overrides_its_base_and_keeps_the_rest():
    base = load_params(ROOT / "params.yaml")
    tiny = load_params(ROOT / "profiles" / "tiny.yaml")
    assert tiny.profile == "tiny"
    assert tiny.embedded_corpus.pool_size < base.embedded_corpus.pool_size
    # Keys the profile does not name come from the base file.
    assert tiny.filtered_pool.max_aspect_ratio == base.filtered_pool.max_aspect_ratio
    assert tiny.student_model.lr == base.student_model.lr


def test_set_overrides_are_parsed_as_yaml():
    params = load_params(
        ROOT / "params.yaml", ["student_model.steps=7", "lake.root=s3://b/p", "filtered_pool.require_english=false"]
    )
    assert params.student_model.steps == 7
    assert params.lake.root == "s3://b/p"
    assert params.filtered_pool.require_english is False
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


@pytest.mark.parametrize(
    "bad", ["student_model.stepz=3", "synthetic_captions.num_captions=0", "student_model.distill_lambda=2"]
)
def test_bad_values_and_typos_are_rejected(bad):
    with pytest.raises(ValidationError):
        load_params(ROOT / "params.yaml", [bad])


def test_override_syntax_errors_are_clear():
    with pytest.raises(ValueError, match=r"section\.key=value"):
        apply_overrides({}, ["no-equals-sign"])


def test_pretrained_mode_needs_teachers(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("teacher_models:\n  mode: pretrained\n")
    with pytest.raises(ValidationError, match="teachers"):
        load_params(path)


def test_base_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_params(tmp_path / "a.yaml")


def test_models_command_lists_every_variant_with_counts(capsys):
    from chain.cli import main

    assert main(["models"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert {"tiny-vit", "MobileCLIP-nano", "MobileCLIP-S0", "MobileCLIP-B"} <= set(lines)
    assert lines["MobileCLIP-S0"][1:3] == ["11.41", "42.44"]
