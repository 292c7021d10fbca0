"""The DataCompDR sample and shard format (docs/method.md §2.6), read and written.

A sample is a group of webdataset tar members ``KEY.<ext>``:

- ``url.txt``: the image URL;
- ``syn.json``: ``{"syn_text": [S captions]}``; Apple's newer generator may hold several
  ``syn_text*`` keys (one per captioner), each a list of captions;
- ``paug.json``: ``{"param_aug": [A records]}`` (``training.data.augment`` compact format); in some
  released shards the list itself is a JSON string;
- ``npz`` (float32) or ``pth.gz`` (gzipped ``torch.save`` of a dict of bfloat16 tensors) with
  ``image_emb`` [A, D] and either
  - the combined layout: ``text_emb`` [R + S, D], the R (usually 1) real captions first, then
    the synthetic captions of every ``syn_text*`` key in ``syn.json`` order; or
  - the per-key layout: ``text_emb`` [R, D] plus ``<syn_key>_emb`` [S_k, D] per key;
- ``json``: ``{"uid", "sha256", ...}``;
- optionally ``jpg`` (the image bytes) and ``txt`` (the real caption), which released DataCompDR
  omits (images are joined from DataComp by uid) and this pipeline's own shards carry.

D is the concatenation of every teacher's L2-normalised embedding (``DRMeta.teacher_dims``).
The reader accepts all these variants; anything malformed raises :class:`DRSampleError`, whose
``reason`` the stage and the loader count as a skip.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from clipforge.config import EmbeddingFormat
from training.data.augment import AugParamsError, validate_params
from training.data.tar_shards import IMAGE_EXTS, TarWriter, iter_tar_samples

DR_META_FILE = "dr_meta.json"
# A reinforced dataset folder: shards under DR_SHARDS_DIR, DR_META_FILE beside them.
DR_SHARDS_DIR = "shards"
SYN_KEY_PATTERN = re.compile(r"^syn_text")
DEFAULT_SYN_KEY = "syn_text"

EMBEDDING_FORMATS: tuple[str, ...] = get_args(EmbeddingFormat)
TextLayout = Literal["combined", "per_key"]


class DRSampleError(ValueError):
    """A DataCompDR sample that cannot be used; ``reason`` is a short code for skip counts."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass
class DRSample:
    """One reinforced sample, in memory.

    ``real_emb`` holds the real caption row(s) [R, D]; ``syn_emb[k]`` the rows [S_k, D] of the
    captions ``syn_text[k]``. :attr:`text_emb` gives the combined [R + S, D] view.
    """

    uid: str
    param_aug: list[Any]
    image_emb: np.ndarray  # [A, D] float32
    real_emb: np.ndarray  # [R, D] float32
    syn_text: dict[str, list[str]]
    syn_emb: dict[str, np.ndarray]  # key -> [S_k, D] float32
    sha256: str | None = None
    url: str = ""
    key: str = ""
    jpg: bytes | None = None
    txt: str | None = None
    # Further fields of the sample's json member, kept for round trips.
    extra_json: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_combined(
        cls,
        *,
        uid: str,
        param_aug: list[Any],
        image_emb: np.ndarray,
        text_emb: np.ndarray,
        syn_text: list[str],
        **kwargs: Any,
    ) -> DRSample:
        """Build from the combined layout: ``text_emb`` [R + S, D], S = len(syn_text)."""
        text_emb = np.asarray(text_emb, dtype=np.float32)
        num_real = text_emb.shape[0] - len(syn_text) if text_emb.ndim == 2 else 0
        if num_real < 1:
            raise DRSampleError(
                "bad_shape", f"text_emb {text_emb.shape} has no real-caption row for {len(syn_text)} captions"
            )
        return cls(
            uid=uid,
            param_aug=param_aug,
            image_emb=np.asarray(image_emb, dtype=np.float32),
            real_emb=text_emb[:num_real],
            syn_text={DEFAULT_SYN_KEY: list(syn_text)},
            syn_emb={DEFAULT_SYN_KEY: text_emb[num_real:]},
            **kwargs,
        )

    @property
    def captions(self) -> list[str]:
        """Every synthetic caption, keys in order: row ``R + s`` of :attr:`text_emb`."""
        return [c for key in self.syn_text for c in self.syn_text[key]]

    @property
    def syn_text_emb(self) -> np.ndarray:
        """[S, D], rows aligned with :attr:`captions`."""
        return np.concatenate([self.syn_emb[key] for key in self.syn_text], axis=0)

    @property
    def text_emb(self) -> np.ndarray:
        """Combined [R + S, D]: real caption row(s) then every synthetic caption."""
        return np.concatenate([self.real_emb, self.syn_text_emb], axis=0)

    @property
    def num_augs(self) -> int:
        return int(self.image_emb.shape[0])

    @property
    def num_real(self) -> int:
        return int(self.real_emb.shape[0])

    @property
    def num_syn(self) -> int:
        return sum(len(v) for v in self.syn_text.values())

    @property
    def emb_dim(self) -> int:
        return int(self.image_emb.shape[1])

    def validate(self, expected_dim: int | None = None) -> None:
        """Raise :class:`DRSampleError` unless every part is consistent and finite."""
        if not isinstance(self.uid, str) or not self.uid:
            raise DRSampleError("missing_uid", f"uid must be a non-empty string, got {self.uid!r}")
        _check_param_aug(self.param_aug)
        if not self.syn_text or self.num_syn < 1:
            raise DRSampleError("no_synthetic_captions", f"uid {self.uid}: no synthetic captions")
        for key, captions in self.syn_text.items():
            if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
                raise DRSampleError("bad_syn_json", f"uid {self.uid}: {key} must be a list of strings")
        dim = _check_matrix(self.image_emb, "image_emb", len(self.param_aug), expected_dim)
        _check_matrix(self.real_emb, "text_emb (real captions)", None, dim)
        if self.real_emb.shape[0] < 1:
            raise DRSampleError("bad_shape", f"uid {self.uid}: no real-caption embedding row")
        if set(self.syn_emb) != set(self.syn_text):
            raise DRSampleError(
                "bad_shape",
                f"uid {self.uid}: caption keys {list(self.syn_text)} vs embedding keys {list(self.syn_emb)}",
            )
        for key, captions in self.syn_text.items():
            _check_matrix(self.syn_emb[key], f"{key} embeddings", len(captions), dim)


def _check_param_aug(param_aug: Any) -> None:
    if not isinstance(param_aug, list) or not param_aug:
        raise DRSampleError("bad_param_aug", f"param_aug must be a non-empty list, got {type(param_aug).__name__}")
    for index, record in enumerate(param_aug):
        try:
            validate_params(record)
        except AugParamsError as exc:
            raise DRSampleError("bad_param_aug", f"augmentation {index}: {exc}") from exc


def _check_matrix(array: Any, what: str, rows: int | None, dim: int | None) -> int:
    """[rows, dim] finite float matrix; returns its column count."""
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        shape = getattr(array, "shape", None)
        raise DRSampleError("bad_shape", f"{what} must be a 2-D array, got shape {shape}")
    if rows is not None and array.shape[0] != rows:
        raise DRSampleError("bad_shape", f"{what} has {array.shape[0]} rows, expected {rows}")
    if array.shape[1] < 1 or (dim is not None and array.shape[1] != dim):
        raise DRSampleError("bad_shape", f"{what} has {array.shape[1]} columns, expected {dim}")
    if not np.isfinite(array).all():
        raise DRSampleError("nonfinite_embedding", f"{what} holds NaN or inf")
    return int(array.shape[1])


# ---- encoding ---------------------------------------------------------------------------------


def _encode_embeddings(arrays: dict[str, np.ndarray], embedding_format: str) -> bytes:
    if embedding_format == "npz":
        buffer = io.BytesIO()
        np.savez(buffer, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()})
        return buffer.getvalue()
    if embedding_format == "pth.gz":
        buffer = io.BytesIO()
        torch.save(
            {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).bfloat16() for k, v in arrays.items()},
            buffer,
        )
        # mtime=0: identical inputs give identical bytes (reproducible shards).
        return gzip.compress(buffer.getvalue(), mtime=0)
    raise ValueError(f"embedding_format must be one of {EMBEDDING_FORMATS}, got {embedding_format!r}")


def encode_sample(
    sample: DRSample,
    *,
    embedding_format: EmbeddingFormat,
    layout: TextLayout = "combined",
    param_aug_as_string: bool = False,
) -> dict[str, bytes]:
    """Members (extension -> bytes) of one sample; validates it first.

    ``layout="combined"`` writes ``text_emb`` [R + S, D] (what this pipeline writes);
    ``"per_key"`` writes ``text_emb`` [R, D] plus ``<syn_key>_emb``, as Apple's newer generator.
    """
    sample.validate()
    arrays: dict[str, np.ndarray] = {"image_emb": sample.image_emb}
    if layout == "combined":
        arrays["text_emb"] = sample.text_emb
    elif layout == "per_key":
        arrays["text_emb"] = sample.real_emb
        arrays.update({f"{key}_emb": sample.syn_emb[key] for key in sample.syn_text})
    else:
        raise ValueError(f"layout must be 'combined' or 'per_key', got {layout!r}")
    param_aug: Any = json.dumps(sample.param_aug) if param_aug_as_string else sample.param_aug
    meta = {**sample.extra_json, "uid": sample.uid, "sha256": sample.sha256}
    members = {
        "url.txt": sample.url.encode("utf-8"),
        "syn.json": json.dumps(sample.syn_text, ensure_ascii=False).encode("utf-8"),
        "paug.json": json.dumps({"param_aug": param_aug}).encode("utf-8"),
        embedding_format: _encode_embeddings(arrays, embedding_format),
        "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
    }
    if sample.jpg is not None:
        members["jpg"] = sample.jpg
    if sample.txt is not None:
        members["txt"] = sample.txt.encode("utf-8")
    return members


# ---- decoding ---------------------------------------------------------------------------------


def _load_json(members: dict[str, bytes], ext: str) -> Any:
    try:
        return json.loads(members[ext].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DRSampleError(f"bad_{ext.replace('.', '_')}", f"{ext} is not valid JSON: {exc}") from exc


def _decode_embeddings(members: dict[str, bytes]) -> dict[str, np.ndarray]:
    # Prefer float32 npz when both exist (as Apple's loader does).
    if "npz" in members:
        try:
            with np.load(io.BytesIO(members["npz"]), allow_pickle=False) as data:
                return {k: np.asarray(data[k], dtype=np.float32) for k in data.files}
        except (ValueError, OSError, EOFError) as exc:
            raise DRSampleError("bad_embeddings", f"npz cannot be read: {exc}") from exc
    if "pth.gz" in members:
        try:
            raw = gzip.decompress(members["pth.gz"])
            data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception as exc:  # gzip, pickle and torch all raise their own types
            raise DRSampleError("bad_embeddings", f"pth.gz cannot be read: {exc}") from exc
        if not isinstance(data, dict):
            raise DRSampleError("bad_embeddings", f"pth.gz must hold a dict, got {type(data).__name__}")
        out = {}
        for k, v in data.items():
            if not isinstance(v, torch.Tensor):
                raise DRSampleError("bad_embeddings", f"pth.gz entry {k!r} is not a tensor")
            out[str(k)] = v.float().numpy()
        return out
    raise DRSampleError("missing_embeddings", "sample has neither npz nor pth.gz")


def _syn_captions(syn: Any) -> dict[str, list[str]]:
    if not isinstance(syn, dict):
        raise DRSampleError("bad_syn_json", f"syn.json must be an object, got {type(syn).__name__}")
    out: dict[str, list[str]] = {}
    for key, value in syn.items():
        if not SYN_KEY_PATTERN.match(key):
            continue
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise DRSampleError("bad_syn_json", f"syn.json {key!r} must be a list of strings")
        out[key] = value
    if sum(len(v) for v in out.values()) < 1:
        raise DRSampleError("no_synthetic_captions", f"syn.json holds no syn_text* captions (keys {list(syn)})")
    return out


def decode_sample(key: str, members: dict[str, bytes], *, expected_dim: int | None = None) -> DRSample:
    """Parse and validate one sample's members (extension -> bytes); any layout variant."""
    for required in ("json", "syn.json", "paug.json"):
        if required not in members:
            raise DRSampleError("missing_member", f"sample {key!r} has no {required} (members: {sorted(members)})")
    meta = _load_json(members, "json")
    if not isinstance(meta, dict) or not isinstance(meta.get("uid"), str) or not meta["uid"]:
        raise DRSampleError("missing_uid", f"sample {key!r}: json has no uid")
    syn_text = _syn_captions(_load_json(members, "syn.json"))
    paug = _load_json(members, "paug.json")
    param_aug = paug.get("param_aug") if isinstance(paug, dict) else None
    if isinstance(param_aug, str):
        try:
            param_aug = json.loads(param_aug)
        except json.JSONDecodeError as exc:
            raise DRSampleError("bad_param_aug", f"param_aug string is not JSON: {exc}") from exc
    _check_param_aug(param_aug)
    arrays = _decode_embeddings(members)
    for name in ("image_emb", "text_emb"):
        if name not in arrays:
            raise DRSampleError("missing_embeddings", f"embeddings lack {name!r} (have {sorted(arrays)})")
    text_emb = arrays["text_emb"]
    per_key = [f"{k}_emb" in arrays for k in syn_text]
    if all(per_key):
        real_emb = text_emb
        syn_emb = {k: arrays[f"{k}_emb"] for k in syn_text}
    elif any(per_key):
        missing = [k for k, present in zip(syn_text, per_key, strict=True) if not present]
        raise DRSampleError("missing_embeddings", f"per-key embeddings lack {missing}")
    else:
        # Combined layout: real caption rows first, then every key's captions in order.
        num_syn = sum(len(v) for v in syn_text.values())
        if text_emb.ndim != 2 or text_emb.shape[0] <= num_syn:
            raise DRSampleError("bad_shape", f"text_emb {text_emb.shape} cannot hold real rows plus {num_syn} captions")
        num_real = text_emb.shape[0] - num_syn
        real_emb = text_emb[:num_real]
        syn_emb, start = {}, num_real
        for k, captions in syn_text.items():
            syn_emb[k] = text_emb[start : start + len(captions)]
            start += len(captions)
    image_bytes = next((members[ext] for ext in IMAGE_EXTS if ext in members), None)
    txt = None
    if "txt" in members:
        try:
            txt = members["txt"].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DRSampleError("bad_txt", f"txt is not UTF-8: {exc}") from exc
    sample = DRSample(
        uid=meta["uid"],
        param_aug=param_aug,
        image_emb=arrays["image_emb"],
        real_emb=real_emb,
        syn_text=syn_text,
        syn_emb=syn_emb,
        sha256=meta.get("sha256"),
        url=members.get("url.txt", b"").decode("utf-8", errors="replace"),
        key=key,
        jpg=image_bytes,
        txt=txt,
        extra_json={k: v for k, v in meta.items() if k not in ("uid", "sha256")},
    )
    sample.validate(expected_dim)
    return sample


# ---- shards -----------------------------------------------------------------------------------


def read_shard(path: Path, *, expected_dim: int | None = None) -> Iterator[DRSample]:
    """Decode every sample of a shard; raises :class:`DRSampleError` on the first bad one."""
    for key, members in iter_tar_samples(path):
        yield decode_sample(key, members, expected_dim=expected_dim)


class DRShardWriter(TarWriter):
    """Writes DR samples to one tar (see :class:`TarWriter`), the members of a sample adjacent."""

    def __init__(
        self,
        path: Path,
        *,
        embedding_format: EmbeddingFormat,
        layout: TextLayout = "combined",
    ) -> None:
        if embedding_format not in EMBEDDING_FORMATS:
            raise ValueError(f"embedding_format must be one of {EMBEDDING_FORMATS}, got {embedding_format!r}")
        super().__init__(path)
        self.embedding_format = embedding_format
        self.layout = layout
        self.count = 0

    def write(self, sample: DRSample) -> None:
        members = encode_sample(sample, embedding_format=self.embedding_format, layout=self.layout)
        self.write_sample(sample.key or f"{self.count:09d}", members)
        self.count += 1


def write_shard(
    path: Path,
    samples: Iterable[DRSample],
    *,
    embedding_format: EmbeddingFormat,
    layout: TextLayout = "combined",
) -> int:
    """Write ``samples`` to one shard; returns how many were written."""
    with DRShardWriter(path, embedding_format=embedding_format, layout=layout) as writer:
        for sample in samples:
            writer.write(sample)
        return writer.count


# ---- dr_meta.json -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DRMeta:
    """What a reinforced dataset's embeddings mean: ``dr_meta.json`` beside the shards."""

    teachers: tuple[str, ...]
    # Embedding size of each teacher, in concatenation order: columns of image_emb/text_emb.
    teacher_dims: tuple[int, ...]
    # Fixed per-teacher scale of the distillation target (docs/method.md §2.7).
    logit_scales: tuple[float, ...]
    num_augmentations: int
    num_captions: int
    # Resolution each teacher saw the replayed augmentations at.
    image_sizes: tuple[int, ...]
    embedding_format: str = "npz"
    format_version: int = 1

    def __post_init__(self) -> None:
        k = len(self.teachers)
        if k < 1:
            raise ValueError("DRMeta needs at least one teacher")
        for name, values in (
            ("teacher_dims", self.teacher_dims),
            ("logit_scales", self.logit_scales),
            ("image_sizes", self.image_sizes),
        ):
            if len(values) != k:
                raise ValueError(f"DRMeta.{name} has {len(values)} entries for {k} teachers")
        if any(d < 1 for d in self.teacher_dims) or any(s < 1 for s in self.image_sizes):
            raise ValueError(f"DRMeta dims and image sizes must be positive: {self.teacher_dims}, {self.image_sizes}")
        if any(not np.isfinite(s) or s <= 0 for s in self.logit_scales):
            raise ValueError(f"DRMeta.logit_scales must be positive and finite: {self.logit_scales}")
        if self.num_augmentations < 1 or self.num_captions < 1:
            raise ValueError("DRMeta.num_augmentations and num_captions must be >= 1")
        if self.embedding_format not in EMBEDDING_FORMATS:
            raise ValueError(f"DRMeta.embedding_format must be one of {EMBEDDING_FORMATS}")

    @property
    def emb_dim(self) -> int:
        return sum(self.teacher_dims)

    def teacher_slices(self) -> list[slice]:
        """Column range of each teacher inside a concatenated embedding."""
        bounds = np.cumsum([0, *self.teacher_dims])
        return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "teachers": list(self.teachers),
            "teacher_dims": list(self.teacher_dims),
            "logit_scales": list(self.logit_scales),
            "image_sizes": list(self.image_sizes),
            "emb_dim": self.emb_dim,
            "num_augmentations": self.num_augmentations,
            "num_captions": self.num_captions,
            "embedding_format": self.embedding_format,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DRMeta:
        try:
            meta = cls(
                teachers=tuple(str(t) for t in data["teachers"]),
                teacher_dims=tuple(int(d) for d in data["teacher_dims"]),
                logit_scales=tuple(float(s) for s in data["logit_scales"]),
                num_augmentations=int(data["num_augmentations"]),
                num_captions=int(data["num_captions"]),
                image_sizes=tuple(int(s) for s in data["image_sizes"]),
                embedding_format=str(data.get("embedding_format", "npz")),
                format_version=int(data.get("format_version", 1)),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"dr_meta is missing or mistypes a field: {exc}") from exc
        if "emb_dim" in data and int(data["emb_dim"]) != meta.emb_dim:
            raise ValueError(f"dr_meta emb_dim {data['emb_dim']} != sum of teacher_dims {meta.emb_dim}")
        return meta

    def write(self, path: Path) -> Path:
        """Write to ``path`` (a file, or a folder that gets ``dr_meta.json``)."""
        path = Path(path)
        if path.is_dir():
            path = path / DR_META_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def read(cls, path: Path) -> DRMeta:
        path = Path(path)
        if path.is_dir():
            path = path / DR_META_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {DR_META_FILE} at {path}")
        return cls.from_dict(json.loads(path.read_text()))
