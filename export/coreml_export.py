"""Core ML export of a student's image and text encoders (the modules of ``export.wrappers``).

Route: ``torch.export.export(...).run_decompositions({})`` then ``coremltools.convert`` into
an mlprogram; the ``torch.jit.trace`` route fails with torch 2.14. What a written package is
checked for: ``export.coreml_verify``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import clipforge
from clipforge.config import Precision
from export.wrappers import (
    IMAGE_INPUT,
    IMAGE_SCALE,
    OUTPUT_NAME,
    TEXT_INPUT,
    ImageEmbedder,
    TextEmbedder,
    encoder_metadata,
    example_image,
    example_tokens,
)
from training.models.students import StudentClip

AUTHOR = "clipforge"


def deployment_target(name: str) -> Any:
    import coremltools as ct

    target = getattr(ct.target, name, None)
    if target is None:
        raise ValueError(f"unknown Core ML deployment target {name!r}; e.g. iOS16, iOS17, iOS18, macOS14")
    if target.value < ct.target.iOS15.value:
        raise ValueError(f"an mlprogram needs iOS15 or later, got {name!r}")
    return target


def _precision(name: str) -> Any:
    import coremltools as ct

    if name not in ("float16", "float32"):
        raise ValueError(f"compute precision must be float16 or float32, got {name!r}")
    return ct.precision.FLOAT16 if name == "float16" else ct.precision.FLOAT32


@dataclass(frozen=True)
class ExportResult:
    path: Path
    tower: str
    seconds: float  # torch.export + conversion + save


def _drop_aliases(program: torch.export.ExportedProgram) -> int:
    """Replace every ``aten.alias`` node by its input; returns how many were dropped.

    torch.export records a view that is the whole tensor (the causal text mask sliced to the
    full context, ``mask[:77, :77]``) as ``aten.alias``, which coremltools 9 cannot convert
    ("Unsupported fx node alias"). In a functional inference graph an alias is its input.
    """
    graph = program.graph_module.graph
    aliases = [node for node in graph.nodes if node.target is torch.ops.aten.alias.default]
    for node in aliases:
        node.replace_all_uses_with(node.args[0])
        graph.erase_node(node)
    if aliases:
        program.graph_module.recompile()
    return len(aliases)


def _convert(module: nn.Module, example: torch.Tensor, ct_input: Any, precision: str, target: str) -> Any:
    import coremltools as ct

    exported = torch.export.export(module.eval(), (example,)).run_decompositions({})
    _drop_aliases(exported)
    return ct.convert(
        exported,
        inputs=[ct_input],
        # float32 output: the app computes similarities on it; the network itself runs in
        # the compute precision.
        outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
        convert_to="mlprogram",
        minimum_deployment_target=deployment_target(target),
        compute_precision=_precision(precision),
    )


def _describe(mlmodel: Any, student: StudentClip, tower: str, module: nn.Module, description: str) -> None:
    mlmodel.author = AUTHOR
    mlmodel.short_description = description
    mlmodel.version = clipforge.__version__
    mlmodel.user_defined_metadata.update(encoder_metadata(student, tower, module))
    mlmodel.output_description[OUTPUT_NAME] = f"L2-normalised {student.info.embed_dim}-d {tower} embedding"


def export_image_encoder(student: StudentClip, path: Path, *, precision: Precision, target: str) -> ExportResult:
    """Write ``path`` (an .mlpackage) for the image tower of an eval-mode student."""
    import coremltools as ct

    started = time.perf_counter()
    size = student.info.image_size
    module = ImageEmbedder(student.eval())
    ct_input = ct.ImageType(
        name=IMAGE_INPUT,
        shape=(1, 3, size, size),
        scale=IMAGE_SCALE,
        bias=[0.0, 0.0, 0.0],
        color_layout=ct.colorlayout.RGB,
    )
    mlmodel = _convert(module, example_image(student), ct_input, precision, target)
    _describe(
        mlmodel,
        student,
        "image",
        module,
        f"{student.info.variant} image encoder: RGB {size}x{size} image, pixels scaled by 1/255 "
        f"(mean/std applied inside) -> L2-normalised {student.info.embed_dim}-d embedding",
    )
    mlmodel.input_description[IMAGE_INPUT] = f"RGB image, {size}x{size}, centre-cropped"
    mlmodel.save(str(path))
    return ExportResult(path=path, tower="image", seconds=time.perf_counter() - started)


def export_text_encoder(student: StudentClip, path: Path, *, precision: Precision, target: str) -> ExportResult:
    """Write ``path`` (an .mlpackage) for the text tower of an eval-mode student."""
    import coremltools as ct

    started = time.perf_counter()
    length = student.info.context_length
    module = TextEmbedder(student.eval())
    ct_input = ct.TensorType(name=TEXT_INPUT, shape=(1, length), dtype=np.int32)
    mlmodel = _convert(module, example_tokens(student), ct_input, precision, target)
    _describe(
        mlmodel,
        student,
        "text",
        module,
        f"{student.info.variant} text encoder: int32 token ids [1, {length}] "
        f"(tokenizer {student.info.tokenizer}) -> L2-normalised {student.info.embed_dim}-d embedding",
    )
    mlmodel.input_description[TEXT_INPUT] = f"int32 token ids [1, {length}], zero-padded"
    mlmodel.save(str(path))
    return ExportResult(path=path, tower="text", seconds=time.perf_counter() - started)
