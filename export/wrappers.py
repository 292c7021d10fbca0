"""What the Core ML and ONNX exports share: the modules they trace, their input and output names,
example inputs, and the metadata that ties a file to the weights it came from.

Interface (what an app sees, docs/method.md §2.9):
- image: input ``image``, [B, 3, S, S] floats in [0, 1] (Core ML takes an RGB image and scales
  it by 1/255); the student's own mean/std normalisation runs inside the network; output
  ``embedding`` float32 [B, D], L2-normalised.
- text: input ``tokens`` int32 [B, context_length] (the student's tokenizer); output
  ``embedding`` float32 [B, D], L2-normalised.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

import clipforge
from training.models.students import StudentClip

IMAGE_INPUT = "image"
TEXT_INPUT = "tokens"
OUTPUT_NAME = "embedding"
IMAGE_SCALE = 1.0 / 255.0  # Core ML image input -> [0, 1] pixels

# Real captions for tracing and checking the text encoder: varied lengths exercise padding and EOT pooling.
VERIFY_CAPTIONS = (
    "a photo of a dog",
    "a red double-decker bus driving past a row of shops on a rainy afternoon",
    "two cats sleeping on a blue sofa",
    "close-up of a slice of pizza with mushrooms and olives",
    "an empty beach at sunset",
    "x",
)


class ImageEmbedder(nn.Module):
    """[B, 3, S, S] floats in [0, 1] -> [B, D] normalised (mean/std applied by the student)."""

    def __init__(self, student: StudentClip) -> None:
        super().__init__()
        self.student = student

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.student.encode_image(image)


class TextEmbedder(nn.Module):
    """[B, context_length] int32 token ids -> [B, D] normalised.

    Apps hand over int32 (Core ML's integer array type); embedding lookups want int64.
    """

    def __init__(self, student: StudentClip) -> None:
        super().__init__()
        self.student = student

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.student.encode_text(tokens.to(torch.int64))


def example_image(student: StudentClip, batch: int = 1) -> torch.Tensor:
    size = student.info.image_size
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def example_tokens(student: StudentClip) -> torch.Tensor:
    return student.tokenizer()(["a photo of a cat"]).to(torch.int32)


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 over the state dict (sorted names, dtypes, shapes, bytes): ties a file to weights.

    Non-persistent buffers count too: the pixel mean/std live there and are baked into the graph.
    """
    tensors = {**module.state_dict(), **dict(module.named_buffers())}
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def encoder_metadata(student: StudentClip, tower: str, module: nn.Module) -> dict[str, str]:
    """User-defined metadata stored in (and checked from) a package."""
    info = student.info
    return {
        "tower": tower,
        "variant": info.variant,
        "embed_dim": str(info.embed_dim),
        "tokenizer": info.tokenizer,
        "context_length": str(info.context_length),
        "image_size": str(info.image_size),
        "clipforge_version": clipforge.__version__,
        "weights_sha256": weights_fingerprint(module),
    }
