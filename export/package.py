"""Core ML packages and ONNX files of a folded student, written and verified: the one
implementation behind the ``coreml_package`` stage and ``clipforge export``.

Writes ``image_encoder.mlpackage``, ``text_encoder.mlpackage``, ``image_encoder.onnx`` and
``text_encoder.onnx`` (interfaces in ``export.wrappers``). Each file is then verified: Core ML
packages by their spec, MIL program and stored weights (``export.coreml_verify``), ONNX files by
running them in ONNX Runtime against the PyTorch fp32 model (``export.onnx_verify``). A failed
verification is a manifest row with ``verified`` False, so the quality gate stops the chain with
the reason; conversion errors raise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from clipforge.config import CoremlPackageConfig
from clipforge.files import path_bytes, path_sha256
from clipforge.progress import Progress, no_progress
from export.coreml_export import export_image_encoder, export_text_encoder
from export.coreml_verify import expected_image_spec, expected_text_spec, verify_coreml_spec, verify_coreml_weights
from export.onnx_export import EXPORTER_ROUTE, export_image_onnx, export_text_onnx
from export.onnx_verify import verify_image_onnx, verify_text_onnx
from export.reparameterize import pending_folds
from export.wrappers import IMAGE_INPUT, OUTPUT_NAME, TEXT_INPUT, ImageEmbedder, TextEmbedder
from training.models.students import STUDENT_FILE, StudentClip, is_folded_student, load_student


@dataclass(frozen=True)
class PackageFile:
    file: str
    format: str  # "mlpackage" or "onnx"
    tower: str  # "image" or "text"


FILES = (
    PackageFile("image_encoder.mlpackage", "mlpackage", "image"),
    PackageFile("text_encoder.mlpackage", "mlpackage", "text"),
    PackageFile("image_encoder.onnx", "onnx", "image"),
    PackageFile("text_encoder.onnx", "onnx", "text"),
)
FORMATS = {"coreml": "mlpackage", "onnx": "onnx"}  # user-facing name -> PackageFile.format


def files_for(formats: Iterable[str] = tuple(FORMATS)) -> tuple[PackageFile, ...]:
    """The package files of the named formats (``coreml``, ``onnx``), in FILES order."""
    wanted = set(formats)
    unknown = wanted - set(FORMATS)
    if unknown or not wanted:
        raise ValueError(f"formats must be a non-empty subset of {sorted(FORMATS)}, got {sorted(wanted)}")
    return tuple(entry for entry in FILES if entry.format in {FORMATS[name] for name in wanted})


def _exporter(entry: PackageFile, cfg: CoremlPackageConfig) -> Callable[[StudentClip, Path], Any]:
    if entry.format == "mlpackage":
        export = export_image_encoder if entry.tower == "image" else export_text_encoder
        return lambda student, path: export(
            student, path, precision=cfg.precision, target=cfg.minimum_deployment_target
        )
    export = export_image_onnx if entry.tower == "image" else export_text_onnx
    return lambda student, path: export(student, path, opset=cfg.onnx_opset)


def export_package(
    student: StudentClip,
    out_dir: Path,
    cfg: CoremlPackageConfig,
    progress: Progress = no_progress,
    entries: tuple[PackageFile, ...] = FILES,
) -> dict[str, float]:
    """Write ``entries`` (default: all four files) into ``out_dir``; return conversion seconds per file."""
    seconds: dict[str, float] = {}
    for entry in progress(entries, "export", len(entries)):
        result = _exporter(entry, cfg)(student.eval(), out_dir / entry.file)
        seconds[entry.file] = round(result.seconds, 3)
    return seconds


def verify_file(entry: PackageFile, path: Path, student: StudentClip, cfg: CoremlPackageConfig) -> dict[str, Any]:
    """One manifest row: ``verified``, ONNX cosines and the problems found (never raises)."""
    problems: list[str] = []
    facts: dict[str, Any] = {}
    cosine = centred = float("nan")
    if not path.exists():
        problems.append(f"{entry.file} was not written")
    elif entry.format == "mlpackage":
        build = expected_image_spec if entry.tower == "image" else expected_text_spec
        spec_check = verify_coreml_spec(path, build(student, cfg.precision, cfg.minimum_deployment_target))
        wrapper = ImageEmbedder(student) if entry.tower == "image" else TextEmbedder(student)
        weight_check = verify_coreml_weights(path, wrapper, entry.tower)
        problems += spec_check.problems + weight_check.problems
        facts.update(spec_check.facts)
        facts.update({f"weights_{k}": v for k, v in weight_check.facts.items()})
    else:
        verify = verify_image_onnx if entry.tower == "image" else verify_text_onnx
        onnx_check = verify(path, student, min_cosine=cfg.onnx_min_cosine)
        problems += onnx_check.problems
        facts.update(onnx_check.facts)
        facts.update({"samples": onnx_check.samples, "max_abs_diff": onnx_check.max_abs_diff})
        cosine, centred = onnx_check.cosine_min, onnx_check.centred_cosine_min
    return {
        "file": entry.file,
        "format": entry.format,
        "tower": entry.tower,
        "bytes": path_bytes(path),
        "verified": not problems,
        "cosine_min": cosine,
        "centred_cosine_min": centred,  # export.parity: the input-dependent part
        "sha256": path_sha256(path) if path.exists() else "",
        "problems": "; ".join(problems),
        "facts": json.dumps(facts, default=str, sort_keys=True),
    }


def verify_package(
    out_dir: Path,
    student: StudentClip,
    cfg: CoremlPackageConfig,
    progress: Progress = no_progress,
    entries: tuple[PackageFile, ...] = FILES,
) -> pd.DataFrame:
    """Manifest rows for ``entries`` (default: all four files) in ``out_dir``, checked against ``student``."""
    rows = [
        verify_file(entry, out_dir / entry.file, student, cfg) for entry in progress(entries, "verify", len(entries))
    ]
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class PackageResult:
    manifest: pd.DataFrame  # one row per file (verify_file), plus export_seconds
    summary: dict[str, Any]
    metrics: dict[str, float]


def package_student(
    student: StudentClip,
    out_dir: Path,
    cfg: CoremlPackageConfig,
    *,
    formats: Iterable[str] = tuple(FORMATS),
    progress: Progress = no_progress,
) -> PackageResult:
    """Export a folded student's files into ``out_dir``, verify each, and summarise.

    The one implementation behind the ``coreml_package`` stage and ``clipforge export``.
    """
    entries = files_for(formats)
    started = time.perf_counter()
    seconds = export_package(student, out_dir, cfg, progress, entries)
    export_seconds = time.perf_counter() - started
    started = time.perf_counter()
    manifest = verify_package(out_dir, student, cfg, progress, entries)
    verify_seconds = time.perf_counter() - started
    manifest["export_seconds"] = manifest["file"].map(seconds)

    failed = manifest.loc[~manifest["verified"], ["file", "problems"]]
    onnx_rows = manifest[manifest["format"] == "onnx"].set_index("tower")
    summary = {
        "variant": student.info.variant,
        "exported": [entry.file for entry in entries],
        "interface": interface(student),
        "coreml": {
            "route": "torch.export.export(...).run_decompositions({}) -> coremltools.convert (mlprogram)",
            "precision": cfg.precision,
            "minimum_deployment_target": cfg.minimum_deployment_target,
            "checked": "spec (names, types, shapes, version), MIL program (1/255 input scale, the "
            "student's mean/std, weight precision), metadata, stored weights vs PyTorch; predictions "
            "cannot run on Linux",
        },
        "onnx": {
            "route": EXPORTER_ROUTE,
            "opset": cfg.onnx_opset,
            "min_cosine_required": cfg.onnx_min_cosine,
            "cosine_min": {tower: float(value) for tower, value in onnx_rows["cosine_min"].items()},
            "centred_cosine_min": {tower: float(value) for tower, value in onnx_rows["centred_cosine_min"].items()},
        },
        "export_seconds": seconds,
        "verify_seconds": round(verify_seconds, 3),
        "verified_all": bool(manifest["verified"].all()),
        "failed": {row.file: row.problems for row in failed.itertuples()},
    }
    metrics = {
        "export_seconds": export_seconds,
        "verify_seconds": verify_seconds,
        "verified_files": float(manifest["verified"].sum()),
        **{f"onnx_cosine_min_{tower}": float(value) for tower, value in onnx_rows["cosine_min"].items()},
        **{f"bytes_{row.file}": float(row.bytes) for row in manifest.itertuples()},
    }
    return PackageResult(manifest=manifest, summary=summary, metrics=metrics)


def load_folded_student(folder: Path) -> StudentClip:
    """The upstream folded student; refuses a folder that was not reparameterized."""
    if not (folder / STUDENT_FILE).is_file():
        raise FileNotFoundError(f"no {STUDENT_FILE} in {folder}: not a student folder")
    if not is_folded_student(folder):
        raise ValueError(
            f'{folder} holds no student whose student.json says "reparameterized": true; export only folded '
            "students (run the reparameterized_model stage first)"
        )
    student = load_student(folder)
    left = pending_folds(student)
    if left:
        raise ValueError(f"{folder} claims to be folded but blocks keep train-time branches: {', '.join(left[:5])}")
    return student


def interface(student: StudentClip) -> dict[str, Any]:
    info = student.info
    size, length, dim = info.image_size, info.context_length, info.embed_dim
    return {
        "image_encoder": {
            "input": f"{IMAGE_INPUT}: RGB image {size}x{size} (Core ML scales by 1/255); "
            f"ONNX: float32 [batch, 3, {size}, {size}] in [0, 1]",
            "output": f"{OUTPUT_NAME}: float32 [1, {dim}] (ONNX [batch, {dim}]), L2-normalised",
        },
        "text_encoder": {
            "input": f"{TEXT_INPUT}: int32 [1, {length}] (ONNX [batch, {length}]), tokenizer {info.tokenizer}",
            "output": f"{OUTPUT_NAME}: float32 [1, {dim}] (ONNX [batch, {dim}]), L2-normalised",
        },
    }
