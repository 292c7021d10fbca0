"""Checks of a written Core ML package.

Core ML cannot run a prediction on Linux, so a package is verified from its spec and its MIL
program (names, types, shapes, input scale and normalisation, weight precision, metadata) and
by comparing the weights it stores with the PyTorch module's; ONNX Runtime
(``export.onnx_verify``) checks the numerics of the same modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from export.coreml_export import Precision, deployment_target
from export.wrappers import (
    IMAGE_INPUT,
    IMAGE_SCALE,
    OUTPUT_NAME,
    TEXT_INPUT,
    ImageEmbedder,
    TextEmbedder,
    encoder_metadata,
)
from training.models.students import TOWERS, StudentClip


@dataclass(frozen=True)
class CoremlExpectation:
    """What a package must look like; built from the student by ``expected_*_spec``."""

    input_name: str
    input_kind: Literal["image", "tensor"]
    # (1, 3, S, S) for the image, (1, context_length) for tokens.
    input_shape: tuple[int, ...]
    embed_dim: int
    precision: Precision  # coreml_package.precision
    minimum_deployment_target: str  # coreml_package.minimum_deployment_target
    output_name: str = OUTPUT_NAME
    metadata: dict[str, str] = field(default_factory=dict)
    # The student's pixel normalisation, applied inside the network after the 1/255 scale.
    pixel_mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    pixel_std: tuple[float, ...] = (1.0, 1.0, 1.0)


def expected_image_spec(student: StudentClip, precision: Precision, target: str) -> CoremlExpectation:
    size = student.info.image_size
    return CoremlExpectation(
        input_name=IMAGE_INPUT,
        input_kind="image",
        input_shape=(1, 3, size, size),
        embed_dim=student.info.embed_dim,
        precision=precision,
        minimum_deployment_target=target,
        metadata=encoder_metadata(student, "image", ImageEmbedder(student)),
        pixel_mean=tuple(student.info.mean),
        pixel_std=tuple(student.info.std),
    )


def expected_text_spec(student: StudentClip, precision: Precision, target: str) -> CoremlExpectation:
    return CoremlExpectation(
        input_name=TEXT_INPUT,
        input_kind="tensor",
        input_shape=(1, student.info.context_length),
        embed_dim=student.info.embed_dim,
        precision=precision,
        minimum_deployment_target=target,
        metadata=encoder_metadata(student, "text", TextEmbedder(student)),
    )


@dataclass
class CoremlCheck:
    path: Path
    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.problems


def _load_program(path: Path) -> tuple[Any, Any]:
    """(spec, MIL program) of a saved package; reading the program reads the weight file."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    program = milproto_load(spec, specification_version=spec.specificationVersion, file_weights_dir=mlmodel.weights_dir)
    return spec, program


def _array_dtype_name(array_type: Any) -> str:
    from coremltools.proto import FeatureTypes_pb2

    return FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array_type.dataType)


def _check_io(spec: Any, expected: CoremlExpectation, problems: list[str]) -> None:
    inputs, outputs = list(spec.description.input), list(spec.description.output)
    if [f.name for f in inputs] != [expected.input_name]:
        problems.append(f"inputs are {[f.name for f in inputs]}, expected [{expected.input_name!r}]")
    else:
        kind = inputs[0].type.WhichOneof("Type")
        if expected.input_kind == "image":
            image = inputs[0].type.imageType
            size = (expected.input_shape[2], expected.input_shape[3])
            if kind != "imageType":
                problems.append(f"input {expected.input_name!r} is a {kind}, expected an image")
            elif (image.height, image.width) != size:
                problems.append(f"image input is {image.height}x{image.width}, expected {size[0]}x{size[1]}")
            elif image.ColorSpace.Name(image.colorSpace) != "RGB":
                problems.append(f"image colour space is {image.ColorSpace.Name(image.colorSpace)}, expected RGB")
        else:
            array = inputs[0].type.multiArrayType
            if kind != "multiArrayType":
                problems.append(f"input {expected.input_name!r} is a {kind}, expected a multi-array")
            elif tuple(array.shape) != expected.input_shape or _array_dtype_name(array) != "INT32":
                problems.append(
                    f"input {expected.input_name!r} is {_array_dtype_name(array)} {tuple(array.shape)}, "
                    f"expected INT32 {expected.input_shape}"
                )
    if [f.name for f in outputs] != [expected.output_name]:
        problems.append(f"outputs are {[f.name for f in outputs]}, expected [{expected.output_name!r}]")
    else:
        array = outputs[0].type.multiArrayType
        shape, dtype = tuple(array.shape), _array_dtype_name(array)
        if shape != (1, expected.embed_dim) or dtype != "FLOAT32":
            problems.append(f"output is {dtype} {shape}, expected FLOAT32 (1, {expected.embed_dim})")


def _check_program(program: Any, expected: CoremlExpectation, problems: list[str], facts: dict[str, Any]) -> None:
    from coremltools.converters.mil.mil import types

    main = program.functions["main"]
    operations = list(main.operations)
    # Weight precision: every float tensor constant of some size is stored in the compute
    # precision (small scalars such as the 1/255 input scale stay fp32 by design).
    weight_dtypes: dict[str, int] = {}
    for op in operations:
        value = op.outputs[0].val if op.op_type == "const" else None
        if isinstance(value, np.ndarray) and value.size >= 16 and np.issubdtype(value.dtype, np.floating):
            weight_dtypes[str(value.dtype)] = weight_dtypes.get(str(value.dtype), 0) + 1
    facts["weight_dtypes"] = weight_dtypes
    want = "float16" if expected.precision == "float16" else "float32"
    wrong = {k: v for k, v in weight_dtypes.items() if k != want}
    if not weight_dtypes:
        problems.append("the program holds no weight constants")
    elif wrong:
        problems.append(f"weights stored as {wrong}, expected all {want} ({expected.precision} precision)")
    facts["ops"] = len(operations)

    if expected.input_kind == "image":
        _check_image_preprocessing(main, operations, expected, problems, facts)
    else:
        if expected.input_name in main.inputs and main.inputs[expected.input_name].dtype != types.int32:
            problems.append(f"program input {expected.input_name!r} is not int32")
        # EOT pooling must stay a data-dependent argmax over the token ids; a position frozen
        # from the export example would embed every caption at one fixed token.
        facts["argmax_ops"] = sum(op.op_type == "reduce_argmax" for op in operations)


_ELEMENTWISE = ("add", "sub", "mul", "real_div")


def _consumers(var: Any, operations: list[Any]) -> list[Any]:
    return [op for op in operations if any(value is var for value in op.inputs.values())]


def _per_channel(value: Any, channels: int = 3) -> np.ndarray | None:
    """A constant operand as [channels] float64 (a scalar broadcasts), or None if not per-channel."""
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.size == 1:
        return np.full(channels, array[0])
    return array if array.size == channels else None


def _input_affine(start: Any, operations: list[Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The per-channel map ``x -> scale * x + shift`` the program applies to ``start``.

    Follows the single-consumer chain of casts and elementwise ops with a constant operand
    (sub of the mean, mul by 1/std, a bias add, ...) up to the first other op (the first
    convolution); returns (scale [3], shift [3], the op types followed).
    """
    scale, shift = np.ones(3), np.zeros(3)
    current, chain = start, []
    while len(consumers := _consumers(current, operations)) == 1:
        op = consumers[0]
        if op.op_type == "cast":
            current = op.outputs[0]
            continue
        if op.op_type not in _ELEMENTWISE:
            break
        x, y = op.inputs["x"], op.inputs["y"]
        const_first = y is current
        operand = x if const_first else y
        constant = None if operand.val is None else _per_channel(operand.val)
        if constant is None:
            break
        if op.op_type == "add":
            shift = shift + constant
        elif op.op_type == "mul":
            scale, shift = scale * constant, shift * constant
        elif op.op_type == "sub":
            # x - c, or c - x when the constant comes first
            scale, shift = (-scale, constant - shift) if const_first else (scale, shift - constant)
        elif const_first:  # c / x is no affine map of x
            break
        else:
            scale, shift = scale / constant, shift / constant
        chain.append(op.op_type)
        current = op.outputs[0]
    return scale, shift, chain


def _check_image_preprocessing(
    main: Any, operations: list[Any], expected: CoremlExpectation, problems: list[str], facts: dict[str, Any]
) -> None:
    """ImageType scaling (image -> mul(1/255)), then the student's (x - mean) / std, nothing else."""
    image = main.inputs.get(expected.input_name)
    scales = [op for op in _consumers(image, operations) if op.op_type == "mul"] if image is not None else []
    scale = scales[0].inputs["y"].val if len(scales) == 1 else None
    facts["input_scale"] = None if scale is None else float(np.asarray(scale).reshape(-1)[0])
    if scale is None or not np.allclose(np.asarray(scale, dtype=np.float64), IMAGE_SCALE, rtol=1e-6):
        problems.append(f"image input is not scaled by 1/255 (found {facts['input_scale']})")
        return
    # Unit mean/std leaves no op at all (coremltools drops x - 0 and x / 1); other values must
    # appear as ops whose combined effect is exactly the normalisation (to fp16 rounding).
    mean, std = np.asarray(expected.pixel_mean, np.float64), np.asarray(expected.pixel_std, np.float64)
    found_scale, found_shift, chain = _input_affine(scales[0].outputs[0], operations)
    facts["input_normalisation"] = {
        "ops": chain,
        "scale": [round(float(v), 6) for v in found_scale],
        "shift": [round(float(v), 6) for v in found_shift],
    }
    if not (
        np.allclose(found_scale, 1 / std, rtol=1e-3, atol=1e-3) and np.allclose(found_shift, -mean / std, atol=2e-3)
    ):
        problems.append(
            f"pixels after the 1/255 scale go through {chain or 'no ops'} = {found_scale.round(4).tolist()} * x + "
            f"{found_shift.round(4).tolist()}, expected (x - mean) / std with mean {mean.tolist()}, std {std.tolist()}"
        )


def verify_coreml_spec(path: Path, expected: CoremlExpectation) -> CoremlCheck:
    """Check a saved .mlpackage against ``expected``; problems are collected, never raised."""
    check = CoremlCheck(path=Path(path))
    problems, facts = check.problems, check.facts
    if not Path(path).is_dir():
        problems.append(f"{path} is not an .mlpackage folder")
        return check
    try:
        spec, program = _load_program(Path(path))
    except Exception as error:  # a corrupt package: record why, let the gate fail
        problems.append(f"package does not load: {type(error).__name__}: {error}")
        return check
    facts["specification_version"] = int(spec.specificationVersion)
    if spec.WhichOneof("Type") != "mlProgram":
        problems.append(f"model type is {spec.WhichOneof('Type')}, expected mlProgram")
        return check
    target = deployment_target(expected.minimum_deployment_target)
    if spec.specificationVersion != target.value:
        problems.append(
            f"specification version {spec.specificationVersion} does not match deployment target "
            f"{expected.minimum_deployment_target} ({target.value})"
        )
    _check_io(spec, expected, problems)
    _check_program(program, expected, problems, facts)

    metadata = spec.description.metadata
    for field_name in ("author", "shortDescription", "versionString"):
        if not getattr(metadata, field_name):
            problems.append(f"metadata {field_name} is empty")
    stored = dict(metadata.userDefined)
    for key, value in expected.metadata.items():
        if stored.get(key) != value:
            problems.append(f"metadata {key!r} is {stored.get(key)!r}, expected {value!r}")
    return check


def _param_const_name(name: str) -> str:
    # torch.export names a lifted parameter "p_" + its dotted path with dots as underscores;
    # coremltools keeps that name on the constant (plus "_to_fp16" when it casts it).
    return "p_" + name.replace(".", "_")


def tower_parameters(module: nn.Module, tower: str) -> dict[str, torch.Tensor]:
    """Parameters one tower's graph uses: under ``visual`` for the image, the rest for text."""
    if tower not in TOWERS:
        raise ValueError(f"tower must be 'image' or 'text', got {tower!r}")
    out = {}
    for name, param in module.named_parameters():
        parts = name.split(".")
        if parts[-1] in ("logit_scale", "logit_bias"):
            continue  # used by the loss, by neither encoder
        if ("visual" in parts) == (tower == "image"):
            out[name] = param
    return out


def verify_coreml_weights(
    path: Path,
    module: nn.Module,
    tower: str,
    *,
    min_matched_fraction: float = 0.5,
    rtol: float = 2e-3,
    atol: float = 1e-4,
) -> CoremlCheck:
    """Compare the weights a package stores with ``module``'s (the wrapper that was exported).

    Constants are matched to the tower's parameters by name and shape; a parameter the
    converter fused, deduplicated or rewrote (conv + BatchNorm, transposed projections) has
    no match and is not compared. Fails when a matched constant differs beyond fp16
    rounding (a different or corrupted model) or when too few parameter elements could be
    matched to judge.
    """
    check = CoremlCheck(path=Path(path))
    try:
        _, program = _load_program(Path(path))
    except Exception as error:
        check.problems.append(f"package does not load: {type(error).__name__}: {error}")
        return check
    consts: dict[str, np.ndarray] = {}
    for op in program.functions["main"].operations:
        if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray):
            consts[op.name.removesuffix("_to_fp16")] = op.outputs[0].val
    total = matched = 0
    mismatched: list[str] = []
    for name, param in tower_parameters(module, tower).items():
        reference = param.detach().float().cpu().numpy()
        total += reference.size
        stored = consts.get(_param_const_name(name))
        if stored is None or stored.shape != reference.shape:
            continue
        matched += reference.size
        if not np.allclose(stored.astype(np.float32), reference, rtol=rtol, atol=atol):
            error = float(np.abs(stored.astype(np.float32) - reference).max())
            mismatched.append(f"{name} (max abs error {error:.3g})")
    fraction = matched / total if total else 0.0
    check.facts.update({"matched_fraction": round(fraction, 4), "mismatched": len(mismatched)})
    if mismatched:
        check.problems.append(
            f"{len(mismatched)} stored weight tensors differ from the model: {', '.join(mismatched[:3])}"
        )
    if fraction < min_matched_fraction:
        check.problems.append(
            f"only {fraction:.0%} of parameter elements could be matched to stored weights "
            f"(need {min_matched_fraction:.0%})"
        )
    return check
