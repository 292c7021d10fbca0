"""ONNX export of the same modules the Core ML packages come from (``export.wrappers``).

Route: ``torch.onnx.export(..., dynamo=True)``, the torch.export-based exporter (the default
since torch 2.9, and the same graph capture the Core ML route uses); the TorchScript route is
deprecated in torch 2.14. The batch axis is dynamic (``batch``), so evaluation can feed
batches; Core ML packages stay at batch 1. What a written file is checked for:
``export.onnx_verify``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

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

EXPORTER_ROUTE = "torch.onnx.export(dynamo=True) (torch.export-based exporter)"
BATCH_AXIS = "batch"


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
    module = ImageEmbedder(student.eval())
    metadata = encoder_metadata(student, "image", module)
    return export_onnx(module, example, path, input_name=IMAGE_INPUT, tower="image", opset=opset, metadata=metadata)


def export_text_onnx(student: StudentClip, path: Path, *, opset: int) -> OnnxExportResult:
    example = student.tokenizer()(list(VERIFY_CAPTIONS[:2])).to(torch.int32)
    module = TextEmbedder(student.eval())
    metadata = encoder_metadata(student, "text", module)
    return export_onnx(module, example, path, input_name=TEXT_INPUT, tower="text", opset=opset, metadata=metadata)
