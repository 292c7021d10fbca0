"""``clipforge export`` on MobileCLIP-nano: from a variant name and from a saved student folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from chain.cli import EXIT_USAGE, main
from clipforge.files import path_sha256
from export.command import REPORT_FILE
from export.package import FILES
from export.reparameterize import check_inputs, fold_student
from tests.fold_helpers import randomise_branches
from training.models.students import build_student, save_student

NANO = "MobileCLIP-nano"


@pytest.mark.slow  # folds, converts and verifies real models (> 10 s)
def test_export_a_variant_writes_verified_files_and_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "image_encoder.onnx").write_bytes(b"stale")  # replaced, not kept
    (out / "notes.txt").write_text("mine")  # not ours: left alone
    assert main(["export", "--variant", NANO, "--out", str(out)]) == 0

    report = json.loads((out / REPORT_FILE).read_text())
    assert report["variant"] == NANO and report["passed"] is True and report["precision"] == "float16"
    assert "random init" in report["source"]
    files = {entry["file"]: entry for entry in report["files"]}
    assert sorted(files) == sorted(entry.file for entry in FILES)
    for name, entry in files.items():
        assert entry["verified"], entry["problems"]
        assert entry["bytes"] > 0 and entry["sha256"] == path_sha256(out / name)
    assert (out / "notes.txt").read_text() == "mine"
    assert not list(out.glob(".staging-*"))
    # What was folded, per tower, and how closely the folded model follows the unfolded one.
    fold = report["fold"]
    assert fold["already_folded"] is False and fold["passed"] is True
    assert fold["folded_by_tower"]["image"] > 0 and fold["folded_by_type"]["TextRepMixer"] == 2
    assert max(fold["max_abs_diff"].values()) <= 1e-4
    assert min(report["onnx_cosine_min"].values()) >= 0.9999
    assert min(report["onnx_centred_cosine_min"].values()) >= 0.9999
    assert report["coreml_checks_passed"] == {"image_encoder.mlpackage": True, "text_encoder.mlpackage": True}
    assert files["image_encoder.mlpackage"]["checks"]["input_scale"] == pytest.approx(1 / 255)
    assert report["seconds"] > 0

    printed = capsys.readouterr().out
    assert f"[export] {NANO}" in printed and "ONNX vs PyTorch fp32" in printed
    assert "Core ML spec/program/weight checks passed: 2/2" in printed
    assert files["text_encoder.onnx"]["sha256"][:16] in printed


@pytest.mark.slow  # folds, converts and verifies real models (> 10 s)
def test_export_student_folders_unfolded_and_folded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    student = randomise_branches(build_student(NANO)).eval()
    save_student(student, tmp_path / "stage" / "model")  # a trained, unfolded student's stage folder
    out = tmp_path / "onnx"
    code = main(["export", "--student", str(tmp_path / "stage"), "--out", str(out), "--formats", "onnx"])
    assert code == 0
    report = json.loads((out / REPORT_FILE).read_text())
    assert [entry["file"] for entry in report["files"]] == ["image_encoder.onnx", "text_encoder.onnx"]
    assert not list(out.glob("*.mlpackage")) and report["coreml_checks_passed"] == {}
    assert report["source"] == str(tmp_path / "stage" / "model")
    assert report["fold"]["folded_modules"] > 0 and report["fold"]["passed"]

    # A folded student folder is exported as it is, here to fp32 Core ML packages.
    folded, _ = fold_student(student, *check_inputs(student, num_images=2))
    save_student(folded, tmp_path / "folded", reparameterized=True)
    fp32 = tmp_path / "fp32"
    args = ["--student", str(tmp_path / "folded"), "--out", str(fp32), "--formats", "coreml", "--precision", "float32"]
    assert main(["export", *args]) == 0
    report = json.loads((fp32 / REPORT_FILE).read_text())
    assert report["fold"] == {"already_folded": True, "folded_modules": 0, "passed": True}
    assert report["precision"] == "float32" and report["onnx_cosine_min"] == {}
    for entry in report["files"]:
        assert entry["file"].endswith(".mlpackage") and entry["verified"], entry["problems"]
        assert set(entry["checks"]["weight_dtypes"]) == {"float32"}


def test_bad_arguments_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--variant", NANO, "--formats", "tflite"], "formats must be"),
        (["--variant", "MobileCLIP-S9"], "clipforge export: unknown student variant 'MobileCLIP-S9'"),
        (["--student", str(tmp_path)], "not a student folder"),
    ]
    for args, message in cases:
        assert main(["export", *args, "--out", str(tmp_path / "out")]) == EXIT_USAGE
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):  # exactly one source
        main(["export", "--out", str(tmp_path)])
