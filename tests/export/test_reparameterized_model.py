"""The reparameterized_model stage: a plain student passes through, a FastViT student folds its image tower."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from clipforge.params_file import load_params
from clipforge.stage_api import StageContext
from export.reparameterize import pending_folds
from export.reparameterized_model import run
from tests.conftest import REPO
from training.models.students import StudentClip, build_student, load_student, save_student


def _stage_context(tmp_path: Path, model: StudentClip) -> StageContext:
    upstream = tmp_path / "student_model"
    save_student(model, upstream / "model")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    params = load_params(REPO / "profiles" / "tiny.yaml")
    return StageContext(
        name="reparameterized_model",
        params=params,
        inputs={"student_model": upstream},
        out_dir=out_dir,
        show_progress=False,
    )


def _check_manifest(manifest: pd.DataFrame, atol: float) -> None:
    assert sorted(manifest["tower"]) == ["image", "text"]
    assert (manifest["folded_modules"] >= 0).all()
    assert (manifest["max_abs_diff"] <= atol).all()


def test_stage_on_plain_student_reports_pass_through(tmp_path: Path) -> None:
    ctx = _stage_context(tmp_path, build_student("tiny-vit").eval())
    outcome = run(ctx)
    _check_manifest(outcome.manifest, ctx.params.reparameterized_model.atol)
    assert outcome.summary["pass_through"] is True
    assert (outcome.manifest["folded_modules"] == 0).all()
    assert (outcome.manifest["max_abs_diff"] == 0).all()
    record = json.loads((ctx.out_dir / "model" / "student.json").read_text())
    assert record["reparameterized"] is True and record["variant"] == "tiny-vit"
    load_student(ctx.out_dir / "model")


def test_stage_on_fastvit_student_folds_the_image_tower(tmp_path: Path, fastvit_variant: str) -> None:
    ctx = _stage_context(tmp_path, build_student(fastvit_variant).eval())
    outcome = run(ctx)
    _check_manifest(outcome.manifest, ctx.params.reparameterized_model.atol)
    per_tower = outcome.manifest.set_index("tower")["folded_modules"]
    assert per_tower["image"] > 0 and per_tower["text"] == 0
    assert outcome.summary["pass_through"] is False
    assert outcome.summary["params_after"] < outcome.summary["params_before"]
    assert pending_folds(load_student(ctx.out_dir / "model")) == []
