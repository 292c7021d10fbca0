"""Core ML packages and ONNX files of folded MobileCLIP-nano and MobileCLIP-S0, verified.

One module-scoped export per variant (S0's 256 px conversion is the costly part): the
student gets random BatchNorm statistics and layer scales so folding matters, is folded,
and goes through ``export.package.package_student`` (the coreml_package stage's code); every
test then reads the same files.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import coremltools as ct
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

import clipforge
from export.coreml_export import export_image_encoder, export_text_encoder
from export.coreml_verify import expected_image_spec, expected_text_spec, verify_coreml_spec, verify_coreml_weights
from export.onnx_export import export_image_onnx, export_text_onnx
from export.onnx_verify import verify_image_onnx, verify_text_onnx
from export.package import FILES, package_student
from export.parity import centred_cosines, cosines
from export.reparameterize import check_inputs, fold_student, pending_folds
from export.wrappers import ImageEmbedder, TextEmbedder
from tests.conftest import default_params
from tests.fold_helpers import randomise_branches
from training.models.mobileclip import MobileClip, TextEncoder
from training.models.mobileclip.variants import OPENAI_MEAN, OPENAI_STD
from training.models.students import StudentClip, build_student

PACKAGE = default_params().coreml_package  # the stage's precision and deployment target

# Converting MCi towers to Core ML takes 10-30 s a variant.
pytestmark = pytest.mark.slow

FEATURE_TYPES = ct.proto.FeatureTypes_pb2
MIN_COSINE = 0.9999
# Captions whose end-of-text tokens sit at different positions: EOT pooling is an argmax
# over the ids, so a position frozen at export time would fail on all but one of them.
CAPTIONS = (
    "dog",
    "a small green frog sitting on a large lily pad in a pond",
    "three red apples and one yellow banana on a white plate next to a glass of water and a knife",
)


def _student(variant: str, seed: int) -> StudentClip:
    torch.manual_seed(seed)
    return randomise_branches(build_student(variant), seed=seed).eval()


@dataclass
class Exported:
    unfolded: StudentClip  # the train-form student in eval mode
    folded: StudentClip
    out_dir: Path
    manifest: pd.DataFrame

    def facts(self, file: str) -> dict:
        return json.loads(self.manifest.set_index("file").loc[file, "facts"])

    def spec(self, file: str) -> Any:  # a Core ML Model protobuf
        return ct.models.MLModel(str(self.out_dir / file), skip_model_load=True).get_spec()


@pytest.fixture(scope="module", params=["MobileCLIP-nano", "MobileCLIP-S0"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    unfolded = _student(request.param, seed=0)
    folded, report = fold_student(unfolded, *check_inputs(unfolded, num_images=2))
    assert report.folded_by_tower()["image"] > 0 and report.folded_by_tower()["text"] > 0
    assert pending_folds(folded) == []
    out_dir = tmp_path_factory.mktemp(request.param)
    result = package_student(folded, out_dir, default_params().coreml_package)
    return Exported(unfolded, folded, out_dir, result.manifest)


def test_every_file_is_written_and_verified(exported: Exported) -> None:
    manifest = exported.manifest.set_index("file")
    assert sorted(manifest.index) == sorted(entry.file for entry in FILES)
    assert manifest["verified"].all(), manifest["problems"].to_dict()
    assert (manifest["bytes"] > 0).all() and (manifest["export_seconds"] > 0).all()
    onnx_rows = manifest[manifest["format"] == "onnx"]
    assert (onnx_rows["cosine_min"] >= MIN_COSINE).all() and (onnx_rows["centred_cosine_min"] >= MIN_COSINE).all()


def test_onnx_matches_the_folded_and_the_train_form_model(exported: Exported) -> None:
    size = exported.folded.info.image_size
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(11))
    tokens = exported.folded.tokenizer()(list(CAPTIONS))
    assert len(set(tokens.argmax(-1).tolist())) == len(CAPTIONS)
    image_session = ort.InferenceSession(str(exported.out_dir / "image_encoder.onnx"))
    text_session = ort.InferenceSession(str(exported.out_dir / "text_encoder.onnx"))
    image_out = image_session.run(["embedding"], {"image": images.numpy()})[0]
    text_out = text_session.run(["embedding"], {"tokens": tokens.to(torch.int32).numpy()})[0]
    for model in (exported.folded, exported.unfolded):
        with torch.no_grad():
            image_ref, text_ref = model.encode_image(images).numpy(), model.encode_text(tokens).numpy()
        # fp32 in both: every sample's cosine, and the input-dependent part of each (a random
        # MCi tower embeds all images within a cosine of 0.99999 of each other).
        for out, ref in ((image_out, image_ref), (text_out, text_ref)):
            assert cosines(ref, out).min() >= MIN_COSINE and centred_cosines(ref, out).min() >= MIN_COSINE
    assert image_out.shape == (3, exported.folded.info.embed_dim)
    assert np.allclose(np.linalg.norm(text_out, axis=1), 1.0, atol=1e-5)


def test_coreml_packages_have_the_documented_interface(exported: Exported) -> None:
    info = exported.folded.info
    image, text = exported.spec("image_encoder.mlpackage"), exported.spec("text_encoder.mlpackage")
    (image_input,) = image.description.input
    assert image_input.name == "image" and image_input.type.WhichOneof("Type") == "imageType"
    image_type = image_input.type.imageType
    assert (image_type.width, image_type.height) == (info.image_size, info.image_size)
    assert info.image_size == {"MobileCLIP-nano": 64, "MobileCLIP-S0": 256}[info.variant]
    assert image_type.ColorSpace.Name(image_type.colorSpace) == "RGB"
    (token_input,) = text.description.input
    assert token_input.name == "tokens" and tuple(token_input.type.multiArrayType.shape) == (1, info.context_length)
    assert info.context_length == {"MobileCLIP-nano": 32, "MobileCLIP-S0": 77}[info.variant]
    assert token_input.type.multiArrayType.dataType == FEATURE_TYPES.ArrayFeatureType.INT32
    for spec, tower in ((image, "image"), (text, "text")):
        assert spec.WhichOneof("Type") == "mlProgram" and spec.specificationVersion == ct.target.iOS17.value
        (output,) = spec.description.output
        assert output.name == "embedding" and tuple(output.type.multiArrayType.shape) == (1, info.embed_dim)
        assert output.type.multiArrayType.dataType == FEATURE_TYPES.ArrayFeatureType.FLOAT32
        meta = spec.description.metadata.userDefined
        assert meta["variant"] == info.variant and meta["tower"] == tower
        assert meta["embed_dim"] == str(info.embed_dim) and meta["tokenizer"] == info.tokenizer
        assert meta["clipforge_version"] == clipforge.__version__
        assert set(exported.facts(f"{tower}_encoder.mlpackage")["weight_dtypes"]) == {"float16"}
    # Pixels are scaled by 1/255 and nothing else: these variants use unit mean/std.
    image_facts = exported.facts("image_encoder.mlpackage")
    assert image_facts["input_scale"] == pytest.approx(1 / 255)
    assert image_facts["input_normalisation"] == {"ops": [], "scale": [1.0] * 3, "shift": [0.0] * 3}
    # EOT pooling stays an argmax over the token ids.
    assert exported.facts("text_encoder.mlpackage")["argmax_ops"] == 1


def test_stored_weights_are_the_folded_models(exported: Exported) -> None:
    # The same architecture with other weights must be told apart.
    other, _ = fold_student(_student(exported.folded.info.variant, seed=1), *check_inputs(exported.folded, 1))
    for tower, wrapper in (("image", ImageEmbedder), ("text", TextEmbedder)):
        path = exported.out_dir / f"{tower}_encoder.mlpackage"
        check = verify_coreml_weights(path, wrapper(exported.folded), tower)
        assert check.passed and check.facts["matched_fraction"] >= 0.5, check.problems
        assert not verify_coreml_weights(path, wrapper(other), tower).passed


def test_non_unit_mean_std_is_applied_in_the_graph(tmp_path: Path) -> None:
    """MobileCLIP2-S3/S4 normalise with OpenAI's mean/std: checked on a nano that does too."""
    unit = _student("MobileCLIP-nano", seed=0)
    openai = StudentClip(unit.clip, dataclasses.replace(unit.info, mean=OPENAI_MEAN, std=OPENAI_STD)).eval()
    folded, _ = fold_student(openai, *check_inputs(openai, num_images=1))
    package = tmp_path / "image_encoder.mlpackage"
    export_image_encoder(folded, package, precision=PACKAGE.precision, target=PACKAGE.minimum_deployment_target)
    check = verify_coreml_spec(
        package, expected_image_spec(folded, precision=PACKAGE.precision, target=PACKAGE.minimum_deployment_target)
    )
    assert check.passed, check.problems
    # After the ImageType's 1/255: (x - mean) / std, i.e. x / std - mean / std per channel.
    normalisation = check.facts["input_normalisation"]
    std, mean = np.array(OPENAI_STD), np.array(OPENAI_MEAN)
    assert np.allclose(normalisation["scale"], 1 / std, rtol=1e-3)
    assert np.allclose(normalisation["shift"], -mean / std, atol=2e-3)
    # The check can fail: this package is not a unit-mean/std model, nor the other way round.
    unit_folded, _ = fold_student(unit, *check_inputs(unit, num_images=1))
    wrong = verify_coreml_spec(
        package, expected_image_spec(unit_folded, precision=PACKAGE.precision, target=PACKAGE.minimum_deployment_target)
    )
    assert any("expected (x - mean) / std" in problem for problem in wrong.problems)
    unit_package = tmp_path / "unit.mlpackage"
    export_image_encoder(
        unit_folded, unit_package, precision=PACKAGE.precision, target=PACKAGE.minimum_deployment_target
    )
    assert not verify_coreml_spec(
        unit_package, expected_image_spec(folded, precision=PACKAGE.precision, target=PACKAGE.minimum_deployment_target)
    ).passed
    # ONNX takes [0, 1] pixels too and normalises inside: parity with the student.
    onnx_file = tmp_path / "image_encoder.onnx"
    export_image_onnx(folded, onnx_file, opset=18)
    assert verify_image_onnx(onnx_file, folded, min_cosine=MIN_COSINE).passed
    # Against the unit-mean/std student the plain cosine still passes (a random MCi embeds every
    # image nearly alike); the batch-centred one catches the wrong normalisation.
    wrong_onnx = verify_image_onnx(onnx_file, unit_folded, min_cosine=MIN_COSINE)
    assert wrong_onnx.cosine_min >= MIN_COSINE and wrong_onnx.centred_cosine_min < MIN_COSINE
    assert not wrong_onnx.passed and any("batch-centred" in problem for problem in wrong_onnx.problems)
    # The weights fingerprint covers mean/std, so the file's metadata names the mismatch too.
    assert any("weights_sha256" in problem for problem in wrong_onnx.problems)


def test_a_causal_text_tower_converts(tmp_path: Path) -> None:
    """MobileCLIP-B's text tower is causal: its mask, sliced to the full context, is an
    ``aten.alias`` in the exported graph, which coremltools cannot convert unless dropped."""
    nano = _student("MobileCLIP-nano", seed=0)
    causal = TextEncoder(blocks=("attn",), width=32, heads=2, embed_dim=nano.info.embed_dim, causal=True)
    student = StudentClip(MobileClip(nano.clip.visual, causal, nano.clip.config), nano.info).eval()
    package = tmp_path / "text_encoder.mlpackage"
    export_text_encoder(student, package, precision=PACKAGE.precision, target=PACKAGE.minimum_deployment_target)
    check = verify_coreml_spec(
        package, expected_text_spec(student, precision=PACKAGE.precision, target=PACKAGE.minimum_deployment_target)
    )
    assert check.passed and check.facts["argmax_ops"] == 1, check.problems
    assert verify_coreml_weights(package, TextEmbedder(student), "text").passed
    onnx_file = tmp_path / "text_encoder.onnx"
    export_text_onnx(student, onnx_file, opset=18)
    assert verify_text_onnx(onnx_file, student, min_cosine=MIN_COSINE).passed
