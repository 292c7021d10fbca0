"""coreml_package on the tiny-vit student: files, interfaces, ONNX parity, mismatches caught."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import coremltools as ct
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from clipforge.config import Params
from clipforge.params_file import load_params
from clipforge.stage_api import StageContext
from export.coreml_package import run
from export.coreml_verify import expected_image_spec, expected_text_spec, verify_coreml_spec, verify_coreml_weights
from export.onnx_export import VERIFY_CAPTIONS
from export.onnx_verify import verify_image_onnx, verify_text_onnx
from export.package import FILES, verify_package
from export.reparameterize import reparameterize
from export.wrappers import ImageEmbedder, weights_fingerprint
from tests.conftest import REPO, default_params, stage_gate
from training.models.students import StudentClip, build_student, save_student

PACKAGE = default_params().coreml_package  # the stage's precision and deployment target


def _student(seed: int) -> StudentClip:
    torch.manual_seed(seed)
    return build_student("tiny-vit").eval()


@dataclass
class Packaged:
    params: Params
    student: StudentClip
    out_dir: Path
    manifest: pd.DataFrame
    summary: dict


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Packaged:
    root = tmp_path_factory.mktemp("coreml_package")
    folded, _ = reparameterize(_student(0))
    save_student(folded, root / "reparameterized_model" / "model", reparameterized=True)
    params = load_params(REPO / "profiles" / "tiny.yaml")
    out_dir = root / "out"
    out_dir.mkdir()
    ctx = StageContext(
        name="coreml_package",
        params=params,
        inputs={"reparameterized_model": root / "reparameterized_model"},
        out_dir=out_dir,
        show_progress=False,
    )
    outcome = run(ctx)
    return Packaged(params, folded, out_dir, outcome.manifest, outcome.summary)


@pytest.mark.slow  # a module fixture exports/times real models (> 10 s)
def test_stage_writes_and_verifies_every_file(packaged: Packaged) -> None:
    manifest = packaged.manifest.set_index("file")
    assert sorted(manifest.index) == sorted(entry.file for entry in FILES)
    assert (packaged.out_dir / "image_encoder.mlpackage").is_dir()
    assert (packaged.out_dir / "text_encoder.onnx").is_file()
    assert (manifest["bytes"] > 0).all()
    assert manifest["verified"].all(), manifest["problems"].to_dict()
    onnx_rows = manifest[manifest["format"] == "onnx"]
    assert (onnx_rows["cosine_min"] >= packaged.params.coreml_package.onnx_min_cosine).all()
    assert manifest.loc[manifest["format"] == "mlpackage", "cosine_min"].isna().all()
    # Conversion of the tiny student stays well under a minute per file.
    assert (manifest["export_seconds"] < 60).all(), manifest["export_seconds"].to_dict()
    assert stage_gate("coreml_package", packaged.manifest, packaged.params).passed


@pytest.mark.slow  # a module fixture exports/times real models (> 10 s)
def test_coreml_packages_have_the_documented_interface(packaged: Packaged) -> None:
    info = packaged.student.info
    image = ct.models.MLModel(str(packaged.out_dir / "image_encoder.mlpackage"), skip_model_load=True).get_spec()
    text = ct.models.MLModel(str(packaged.out_dir / "text_encoder.mlpackage"), skip_model_load=True).get_spec()
    for spec in (image, text):
        assert spec.WhichOneof("Type") == "mlProgram"
        assert spec.specificationVersion == ct.target.iOS17.value
        (output,) = spec.description.output
        assert output.name == "embedding" and tuple(output.type.multiArrayType.shape) == (1, info.embed_dim)
        assert output.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
        meta = spec.description.metadata
        assert meta.author and meta.shortDescription and meta.versionString
        assert meta.userDefined["variant"] == "tiny-vit"
        assert meta.userDefined["embed_dim"] == str(info.embed_dim)
        assert meta.userDefined["context_length"] == str(info.context_length)
        assert meta.userDefined["image_size"] == str(info.image_size)
        assert meta.userDefined["tokenizer"] == info.tokenizer
        assert meta.userDefined["clipforge_version"]
    (image_input,) = image.description.input
    assert image_input.name == "image" and image_input.type.WhichOneof("Type") == "imageType"
    assert (image_input.type.imageType.width, image_input.type.imageType.height) == (info.image_size,) * 2
    (token_input,) = text.description.input
    assert token_input.name == "tokens" and tuple(token_input.type.multiArrayType.shape) == (1, info.context_length)
    assert token_input.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32
    facts = packaged.manifest.set_index("file").loc["image_encoder.mlpackage", "facts"]
    assert '"input_scale": 0.00392156' in facts and '"float16"' in facts


@pytest.mark.slow  # a module fixture exports/times real models (> 10 s)
def test_onnx_files_match_pytorch(packaged: Packaged) -> None:
    student = packaged.student
    size = student.info.image_size
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(7))
    tokens = student.tokenizer()(list(VERIFY_CAPTIONS[:3]))
    image_session = ort.InferenceSession(
        str(packaged.out_dir / "image_encoder.onnx"), providers=["CPUExecutionProvider"]
    )
    text_session = ort.InferenceSession(str(packaged.out_dir / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    # A dynamic batch axis: one call embeds the whole batch.
    image_out = image_session.run(["embedding"], {"image": images.numpy()})[0]
    text_out = text_session.run(["embedding"], {"tokens": tokens.to(torch.int32).numpy()})[0]
    with torch.no_grad():
        image_ref = student.encode_image(images).numpy()
        text_ref = student.encode_text(tokens).numpy()
    for out, ref in ((image_out, image_ref), (text_out, text_ref)):
        assert out.shape == ref.shape
        cosine = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
        assert cosine.min() >= 0.9999
        assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow  # a module fixture exports/times real models (> 10 s)
def test_a_different_model_fails_verification_without_raising(packaged: Packaged) -> None:
    other = _student(1)  # same architecture, different weights
    cfg = packaged.params.coreml_package
    manifest = verify_package(packaged.out_dir, other, cfg)
    assert not manifest["verified"].any(), manifest[["file", "problems"]].to_dict("records")
    onnx_rows = manifest[manifest["format"] == "onnx"]
    assert (onnx_rows["cosine_min"] < cfg.onnx_min_cosine).all()
    problems = " ".join(manifest["problems"])
    assert "stored weight tensors differ" in problems and "weights_sha256" in problems
    # The gate turns this manifest into a stop, with the reason.
    gate = stage_gate("coreml_package", manifest, packaged.params)
    assert not gate.passed and "verified" in gate.reason()


@pytest.mark.slow  # a module fixture exports/times real models (> 10 s)
def test_spec_mismatches_are_reported(packaged: Packaged) -> None:
    student = packaged.student
    path = packaged.out_dir / "image_encoder.mlpackage"
    assert verify_coreml_spec(
        path, expected_image_spec(student, precision=PACKAGE.precision, target=PACKAGE.minimum_deployment_target)
    ).passed
    # Asking the image package to be the text encoder, fp32, or iOS 18: each one is caught.
    assert not verify_coreml_spec(
        path, expected_text_spec(student, precision=PACKAGE.precision, target=PACKAGE.minimum_deployment_target)
    ).passed
    fp32 = verify_coreml_spec(
        path, expected_image_spec(student, precision="float32", target=PACKAGE.minimum_deployment_target)
    )
    assert any("float32" in p for p in fp32.problems)
    ios18 = verify_coreml_spec(path, expected_image_spec(student, precision=PACKAGE.precision, target="iOS18"))
    assert any("deployment target" in p for p in ios18.problems)


@pytest.mark.slow  # a module fixture exports/times real models (> 10 s)
def test_corrupted_files_are_detected(packaged: Packaged, tmp_path: Path) -> None:
    student = packaged.student
    package = tmp_path / "image_encoder.mlpackage"
    shutil.copytree(packaged.out_dir / "image_encoder.mlpackage", package)
    (weights,) = package.rglob("weight.bin")
    data = bytearray(weights.read_bytes())
    # Same size, scrambled middle: the package still loads, its weights no longer match.
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(4096)
    weights.write_bytes(bytes(data))
    scrambled = verify_coreml_weights(package, ImageEmbedder(student), "image")
    assert not scrambled.passed and "differ" in scrambled.problems[0]
    # Truncated: the package no longer loads; reported, not raised.
    weights.write_bytes(bytes(data[: len(data) // 3]))
    truncated = verify_coreml_spec(
        package, expected_image_spec(student, precision=PACKAGE.precision, target=PACKAGE.minimum_deployment_target)
    )
    assert not truncated.passed and "does not load" in truncated.problems[0]

    onnx_file = tmp_path / "text_encoder.onnx"
    onnx_bytes = (packaged.out_dir / "text_encoder.onnx").read_bytes()
    onnx_file.write_bytes(onnx_bytes[: len(onnx_bytes) // 2])
    broken = verify_text_onnx(onnx_file, student, min_cosine=0.9999)
    assert not broken.passed and math.isnan(broken.cosine_min)
    assert verify_image_onnx(packaged.out_dir / "image_encoder.onnx", student, min_cosine=0.9999).passed


@pytest.mark.slow  # a module fixture exports/times real models (> 10 s)
def test_an_unfolded_student_is_refused(tmp_path: Path, packaged: Packaged) -> None:
    save_student(_student(0), tmp_path / "reparameterized_model" / "model")  # no "reparameterized" flag
    ctx = StageContext(
        name="coreml_package",
        params=packaged.params,
        inputs={"reparameterized_model": tmp_path / "reparameterized_model"},
        out_dir=tmp_path / "out",
        show_progress=False,
    )
    with pytest.raises(ValueError, match="reparameterized"):
        run(ctx)


def test_weights_fingerprint_covers_the_pixel_normalisation() -> None:
    """Mean/std are non-persistent buffers baked into the image graph: they must change the hash."""
    student = _student(0)
    before = weights_fingerprint(student)
    assert weights_fingerprint(_student(0)) == before
    student.pixel_std.mul_(2)
    assert weights_fingerprint(student) != before
