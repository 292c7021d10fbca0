"""ONNX export of the same encoder wrappers the Core ML packages come from, checked numerically.

Route: ``torch.onnx.export(..., dynamo=True)``, the torch.export-based exporter (the default
since torch 2.9, and the same graph capture the Core ML route uses); the TorchScript route
is deprecated in torch 2.14. The batch axis is dynamic (``batch``), so evaluation can feed
batches; Core ML packages stay at batch 1. Inputs and output mirror the Core ML packages:
``image`` float32 [B, 3, S, S] in [0, 1] (the caller scales by 1/255), ``tokens`` int32
[B, context_length]; ``embedding`` float32 [B, D], L2-normalised.

Verification runs the file in ONNX Runtime (CPU) and compares it with the PyTorch fp32
module per sample: cosine similarity between the two embeddings.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.coreml_export import (
    IMAGE_INPUT,
    OUTPUT_NAME,
    TEXT_INPUT,
    ImageEncoder,
    TextEncoder,
    encoder_metadata,
)
from export.parity import centred_cosines, cosines
from training.models.students import StudentClip

EXPORTER_ROUTE = "torch.onnx.export(dynamo=True) (torch.export-based exporter)"
BATCH_AXIS = "batch"

# Real captions for the text check: varied lengths exercise padding and EOT pooling.
VERIFY_CAPTIONS = (
    "a photo of a dog",
    "a red double-decker bus driving past a row of shops on a rainy afternoon",
    "two cats sleeping on a blue sofa",
    "close-up of a slice of pizza with mushrooms and olives",
    "an empty beach at sunset",
    "x",
)


@dataclass(frozen=True)
class OnnxExportResult:
    path: Path
    tower: str
    seconds: float
    route: str = EXPORTER_ROUTE


def _rename_value(model: Any, old: str, new: str) -> None:
    for node in model.graph:
        for value in node.outputs:
            if value.name == old:
                value.name = new


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    input_name: str,
    tower: str,
    opset: int,
    dynamic_batch: bool = True,
    metadata: dict[str, str] | None = None,
) -> OnnxExportResult:
    """Export ``module(example)`` to one self-contained .onnx file (weights inside)."""
    started = time.perf_counter()
    dynamic_shapes = {input_name: {0: torch.export.Dim.DYNAMIC}} if dynamic_batch else None
    # The wrapper's forward argument is named like the input, so dynamic_shapes keys match.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        program = torch.onnx.export(
            module.eval(),
            (example,),
            input_names=[input_name],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
    model = program.model
    # Naming the output "embedding" at export time collides with the text tower's
    # aten.embedding node (also "embedding"): move any such value aside, then rename.
    _rename_value(model, OUTPUT_NAME, f"{OUTPUT_NAME}_internal")
    if len(model.graph.outputs) != 1:
        raise RuntimeError(f"expected one graph output, got {len(model.graph.outputs)}")
    model.graph.outputs[0].name = OUTPUT_NAME
    if dynamic_batch:
        for value in (*model.graph.inputs, *model.graph.outputs):
            dims = list(value.shape)
            value.shape = type(value.shape)([BATCH_AXIS, *dims[1:]])
    # The same user-defined metadata as the Core ML package (variant, tokenizer, sizes, ...).
    model.metadata_props.update(metadata or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    # Mobile-sized models stay far below protobuf's 2 GB limit: one file, weights inside.
    program.save(str(path), external_data=False)
    return OnnxExportResult(path=path, tower=tower, seconds=time.perf_counter() - started)


def export_image_onnx(student: StudentClip, path: Path, *, opset: int) -> OnnxExportResult:
    size = student.info.image_size
    # Batch 2 in the example: a batch of 1 would be specialised away despite the dynamic axis.
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    module = ImageEncoder(student.eval())
    metadata = encoder_metadata(student, "image", module)
    return export_onnx(module, example, path, input_name=IMAGE_INPUT, tower="image", opset=opset, metadata=metadata)


def export_text_onnx(student: StudentClip, path: Path, *, opset: int) -> OnnxExportResult:
    example = student.tokenizer()(list(VERIFY_CAPTIONS[:2])).to(torch.int32)
    module = TextEncoder(student.eval())
    metadata = encoder_metadata(student, "text", module)
    return export_onnx(module, example, path, input_name=TEXT_INPUT, tower="text", opset=opset, metadata=metadata)


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
    module = ImageEncoder(student.eval())
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
    module = TextEncoder(student.eval())
    return verify_onnx(
        path,
        module,
        tokens,
        input_name=TEXT_INPUT,
        min_cosine=min_cosine,
        expected_dim=student.info.embed_dim,
        expected_metadata=encoder_metadata(student, "text", module),
    )
