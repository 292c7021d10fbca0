"""``clipforge export``: one student to Core ML + ONNX, folded, verified, with a short report.

The source is a student folder (``student.json`` + ``weights.pt``, folded or not; a stage
folder holding ``model/`` works too) or a variant name, which exports a freshly initialised
(random) model of that variant: a way to try the export of S1/S2/B without training. An
unfolded student is folded first and its folded embeddings compared with the unfolded ones
(``export.reparameterize.fold_student``); the files are written and verified by
``export.package.package_student``, the implementation the ``coreml_package`` stage runs.
``export_report.json`` records what was folded, each file's size and sha256, the ONNX
cosines, the Core ML checks and the seconds spent.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from clipforge.config import CoremlPackageConfig, ReparameterizedModelConfig
from export.package import (
    FORMATS,
    files_for,
    load_folded_student,
    package_student,
)
from export.reparameterize import check_inputs, fold_student
from training.models.students import (
    STAGE_MODEL_DIR,
    STUDENT_FILE,
    StudentClip,
    build_student,
    is_folded_student,
    load_student,
)

REPORT_FILE = "export_report.json"
DEFAULT_ROOT = Path("exports")  # git-ignored; a run lands in exports/<variant>
VARIANT_SEED = 0  # --variant models are random, but the same random model on every run


def student_folder(path: Path) -> Path:
    """``path`` itself when it holds ``student.json``, else its ``model/`` (a stage folder)."""
    for candidate in (path, path / STAGE_MODEL_DIR):
        if (candidate / STUDENT_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"no {STUDENT_FILE} in {path} or {path / 'model'}: not a student folder")


def _load_source(folder: Path | None, variant: str | None) -> tuple[StudentClip, bool, str]:
    """(eval-mode student, already folded?, a description of where it came from)."""
    if (folder is None) == (variant is None):
        raise ValueError("give exactly one of a student folder or a variant name")
    if variant is not None:
        torch.manual_seed(VARIANT_SEED)
        return build_student(variant).eval(), False, f"variant {variant} (random init, seed {VARIANT_SEED})"
    assert folder is not None
    folder = student_folder(folder)
    if is_folded_student(folder):
        return load_folded_student(folder), True, str(folder)
    return load_student(folder).eval(), False, str(folder)


def _clear(out_dir: Path, names: Sequence[str]) -> None:
    for name in names:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def export_student(
    out_dir: Path | None = None,
    *,
    folder: Path | None = None,
    variant: str | None = None,
    package: CoremlPackageConfig,
    fold: ReparameterizedModelConfig,
    formats: Sequence[str] = tuple(FORMATS),
) -> dict[str, Any]:
    """Fold (if needed), export, verify; write ``out_dir/export_report.json`` and return it.

    ``package`` is the coreml_package stage's settings, ``fold`` the bars the
    reparameterized_model stage's gate holds a fold to (both from params, as the chain runs).
    ``out_dir`` defaults to ``exports/<variant>`` under the working directory.

    Files are written to a staging folder inside ``out_dir`` and moved in once verified
    (failed or not), replacing earlier files of the same names; other files are left alone.
    """
    started = time.perf_counter()
    entries = files_for(formats)  # refuse unknown formats before any work
    atol, min_cosine = fold.atol, fold.min_centred_cosine
    student, already_folded, source = _load_source(folder, variant)

    if already_folded:
        folded, fold_facts = student, {"already_folded": True, "folded_modules": 0, "passed": True}
    else:
        pixels, tokens = check_inputs(student)
        folded, report = fold_student(student, pixels, tokens)
        fold_facts = {"already_folded": False, **report.as_dict(), "atol": atol, "min_centred_cosine": min_cosine}
        fold_facts["passed"] = all(diff <= atol for diff in report.max_abs_diff.values()) and all(
            cosine >= min_cosine for cosine in report.centred_cosine_min.values()
        )

    out_dir = out_dir or DEFAULT_ROOT / folded.info.variant
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".staging-") as staging:
        result = package_student(folded, Path(staging), package, formats=formats)
        _clear(out_dir, [entry.file for entry in entries])
        for entry in entries:
            if (Path(staging) / entry.file).exists():
                (Path(staging) / entry.file).rename(out_dir / entry.file)

    manifest = result.manifest
    files = [
        {
            "file": row.file,
            "format": row.format,
            "tower": row.tower,
            "bytes": int(row.bytes),
            "sha256": row.sha256,
            "verified": bool(row.verified),
            "export_seconds": float(row.export_seconds),
            "problems": row.problems,
            "checks": json.loads(row.facts),
        }
        for row in manifest.itertuples()
    ]
    coreml_rows = manifest[manifest["format"] == FORMATS["coreml"]]
    report = {
        "variant": folded.info.variant,
        "source": source,
        "out_dir": str(out_dir),
        "precision": package.precision,
        "formats": list(formats),
        "fold": fold_facts,
        "files": files,
        "onnx_cosine_min": result.summary["onnx"]["cosine_min"],
        "onnx_centred_cosine_min": result.summary["onnx"]["centred_cosine_min"],
        "onnx_min_cosine_required": package.onnx_min_cosine,
        "coreml_checks_passed": {row.file: bool(row.verified) for row in coreml_rows.itertuples()},
        "interface": result.summary["interface"],
        "verify_seconds": result.summary["verify_seconds"],
        "seconds": round(time.perf_counter() - started, 3),
        "passed": bool(manifest["verified"].all()) and bool(fold_facts["passed"]),
    }
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def format_report(report: dict[str, Any]) -> str:
    """The printed summary of ``export_report.json``."""
    fold = report["fold"]
    if fold["already_folded"]:
        folded = "already folded"
    else:
        diffs = ", ".join(f"{tower} {diff:.2g}" for tower, diff in fold["max_abs_diff"].items())
        what = (
            f"{fold['folded_modules']} blocks {json.dumps(fold['folded_by_type'])}"
            if fold["folded_modules"]
            else "nothing to fold (no train-time branches)"
        )
        centred = ", ".join(f"{tower} {value:.6f}" for tower, value in fold["centred_cosine_min"].items())
        verdict = "" if fold["passed"] else " FAILED"
        folded = f"{what}; vs unfolded: max abs diff {diffs}, min centred cosine {centred}{verdict}"
    lines = [
        f"[export] {report['variant']} from {report['source']} -> {report['out_dir']}",
        f"  folded: {folded}",
    ]
    for entry in report["files"]:
        status = "verified" if entry["verified"] else f"FAILED: {entry['problems']}"
        lines.append(
            f"  {entry['file']:24s} {_megabytes(entry['bytes']):>10s}  sha256 {entry['sha256'][:16]}  "
            f"{entry['export_seconds']:6.1f} s  {status}"
        )
    if report["onnx_cosine_min"]:
        cosines = ", ".join(f"{tower} {value:.6f}" for tower, value in report["onnx_cosine_min"].items())
        centred = ", ".join(f"{tower} {value:.6f}" for tower, value in report["onnx_centred_cosine_min"].items())
        need = report["onnx_min_cosine_required"]
        lines.append(f"  ONNX vs PyTorch fp32, min cosine: {cosines}; batch-centred: {centred} (need >= {need})")
    if report["coreml_checks_passed"]:
        passed = sum(report["coreml_checks_passed"].values())
        lines.append(f"  Core ML spec/program/weight checks passed: {passed}/{len(report['coreml_checks_passed'])}")
    lines.append(f"  {'passed' if report['passed'] else 'FAILED'} in {report['seconds']:.1f} s; report: {REPORT_FILE}")
    return "\n".join(lines)
