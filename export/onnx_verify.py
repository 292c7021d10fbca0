"""Checks of a written ONNX file: run it in ONNX Runtime (CPU) and compare it with the PyTorch fp32
module per sample (cosine, and batch-centred cosine: ``export.parity``), plus its opset and
metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.parity import centred_cosines, cosines
from export.wrappers import (
    IMAGE_INPUT,
    OUTPUT_NAME,
    TEXT_INPUT,
    VERIFY_CAPTIONS,
    ImageEmbedder,
    TextEmbedder,
    encoder_metadata,
)
from training.models.students import StudentClip


@dataclass
class OnnxCheck:
    path: Path
    cosine_min: float = float("nan")
    centred_cosine_min: float = float("nan")  # export.parity: the input-dependent part
    max_abs_diff: float = float("nan")
    samples: int = 0
    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.problems


def verify_onnx(
    path: Path,
    reference: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    *,
    input_name: str,
    min_cosine: float,
    expected_dim: int | None = None,
    expected_metadata: dict[str, str] | None = None,
) -> OnnxCheck:
    """Run ``path`` in ONNX Runtime (CPU) on ``inputs`` [N, ...], one sample at a time and as
    a batch, against ``reference`` (PyTorch fp32); per-sample cosine must reach ``min_cosine``,
    and so must the batch-centred cosine (``export.parity``) when there are several samples.

    Problems are collected, never raised: a file that does not load or run fails the check.
    """
    import onnxruntime as ort

    check = OnnxCheck(path=Path(path))
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names_in = [i.name for i in session.get_inputs()]
        names_out = [o.name for o in session.get_outputs()]
        opset, stored_metadata = _file_facts(path)
        check.facts.update({"inputs": names_in, "outputs": names_out, "opset": opset})
        if names_in != [input_name] or names_out != [OUTPUT_NAME]:
            check.problems.append(
                f"file has inputs {names_in} and outputs {names_out}, expected [{input_name!r}] and ['embedding']"
            )
            return check
        for key, value in (expected_metadata or {}).items():
            if stored_metadata.get(key) != value:
                check.problems.append(f"metadata {key!r} is {stored_metadata.get(key)!r}, expected {value!r}")
        feed = inputs.numpy()
        single = np.concatenate([session.run(None, {input_name: feed[i : i + 1]})[0] for i in range(len(feed))])
        batched = session.run(None, {input_name: feed})[0]
    except Exception as error:  # a corrupt or mismatched file: record why, let the gate fail
        check.problems.append(f"ONNX Runtime could not run the file: {type(error).__name__}: {error}")
        return check
    with torch.no_grad():
        expected = reference(inputs).float().numpy()
    if single.shape != expected.shape or (expected_dim is not None and single.shape[1] != expected_dim):
        check.problems.append(f"output shape {single.shape}, expected {expected.shape}")
        return check
    check.samples = len(expected)
    # np.min, not min(): a NaN (a zero or broken embedding) must propagate and fail the check.
    check.cosine_min = float(np.min(np.concatenate([cosines(expected, single), cosines(expected, batched)])))
    check.max_abs_diff = float(max(np.abs(single - expected).max(), np.abs(batched - expected).max()))
    if not np.isfinite(check.cosine_min) or check.cosine_min < min_cosine:
        check.problems.append(
            f"min cosine vs PyTorch {check.cosine_min:.6f} < {min_cosine} over {len(expected)} samples"
        )
    if len(expected) > 1:
        centred = np.min(np.concatenate([centred_cosines(expected, single), centred_cosines(expected, batched)]))
        check.centred_cosine_min = float(centred)
        if not np.isfinite(centred) or centred < min_cosine:
            check.problems.append(
                f"min batch-centred cosine vs PyTorch {centred:.6f} < {min_cosine}: the file does not "
                "tell the inputs apart as PyTorch does"
            )
    return check


def _file_facts(path: Path) -> tuple[int | None, dict[str, str]]:
    """(default-domain opset, metadata_props) of an .onnx file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return opset, {prop.key: prop.value for prop in model.metadata_props}


def verify_images(num_images: int, image_size: int, seed: int = 0) -> torch.Tensor:
    """[N, 3, S, S] in [0, 1]: random pixels plus a flat grey and a smooth gradient image."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(num_images, 3, image_size, image_size, generator=generator)
    if num_images >= 3:
        images[0] = 0.5
        ramp = torch.linspace(0, 1, image_size)
        images[1] = torch.stack(
            [
                ramp.view(1, -1).expand(image_size, -1),
                ramp.view(-1, 1).expand(-1, image_size),
                1 - ramp.view(1, -1).expand(image_size, -1),
            ]
        )
    return images


def verify_image_onnx(
    path: Path, student: StudentClip, *, min_cosine: float, num_images: int = 4, seed: int = 0
) -> OnnxCheck:
    images = verify_images(num_images, student.info.image_size, seed)
    module = ImageEmbedder(student.eval())
    return verify_onnx(
        path,
        module,
        images,
        input_name=IMAGE_INPUT,
        min_cosine=min_cosine,
        expected_dim=student.info.embed_dim,
        expected_metadata=encoder_metadata(student, "image", module),
    )


def verify_text_onnx(path: Path, student: StudentClip, *, min_cosine: float) -> OnnxCheck:
    tokens = student.tokenizer()(list(VERIFY_CAPTIONS)).to(torch.int32)
    module = TextEmbedder(student.eval())
    return verify_onnx(
        path,
        module,
        tokens,
        input_name=TEXT_INPUT,
        min_cosine=min_cosine,
        expected_dim=student.info.embed_dim,
        expected_metadata=encoder_metadata(student, "text", module),
    )
