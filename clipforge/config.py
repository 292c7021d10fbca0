"""Typed configuration: one params file, validated once at the edge.

A params file is YAML with one section per stage. A file may name a ``base`` file (relative
to itself) whose values it overrides, so a profile (``profiles/tiny.yaml``) states only what
differs from ``params.yaml``. ``--set section.key=value`` overrides are applied last and
parsed as YAML scalars (``--set student_model.steps=10``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    # Unknown keys are errors: a typo in params.yaml must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class LakeConfig(_Section):
    # Local folder (relative to the working directory) or s3://bucket/prefix.
    root: str = "lake"
    # Custom S3 endpoint (moto, MinIO); None falls back to AWS_ENDPOINT_URL / boto3 defaults.
    endpoint_url: str | None = None
    region: str | None = None


class MlflowConfig(_Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: str = "mlartifacts"
    experiment: str = "clipforge"


class EmbeddedCorpusConfig(_Section):
    seed: int = 0
    pool_size: int = 2000
    teacher_corpus_size: int = 6000
    benchmark_size: int = 400
    # Side of the generated scene canvas before aspect/size distortions.
    image_size: int = 96
    shard_size: int = 500
    duplicate_fraction: float = Field(0.02, ge=0, le=1)
    junk_caption_fraction: float = Field(0.08, ge=0, le=1)
    wrong_caption_fraction: float = Field(0.1, ge=0, le=1)
    non_english_fraction: float = Field(0.05, ge=0, le=1)
    # Captions naming only some of the scene's attributes (web alt-text is rarely complete).
    partial_caption_fraction: float = Field(0.35, ge=0, le=1)
    tiny_image_fraction: float = Field(0.04, ge=0, le=1)
    extreme_aspect_fraction: float = Field(0.04, ge=0, le=1)


class DatacompPoolConfig(_Section):
    # "embedded" reads the generated pool; otherwise a local folder or s3:// URI holding
    # img2dataset shards (*.tar with a parquet beside each) and optional metadata parquet.
    source: str = "embedded"
    max_image_side: int = 512


class OpenClipSpec(_Section):
    """A CLIP or CoCa model: an open_clip model name plus pretrained tag or checkpoint path."""

    name: str
    model: str
    pretrained: str | None = None
    # Fixed logit scale used for this teacher's distillation target (METHOD.md 2.7).
    logit_scale: float = 100.0


class BootstrapTrainConfig(_Section):
    steps: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 30
    image_size: int = 64
    seed: int = 0


class TeacherModelsConfig(_Section):
    mode: Literal["bootstrap", "pretrained"] = "bootstrap"
    # For "pretrained": the ensemble, each an open_clip name + tag or local checkpoint path.
    teachers: list[OpenClipSpec] = Field(default_factory=list)
    bootstrap: BootstrapTrainConfig = BootstrapTrainConfig()

    @model_validator(mode="after")
    def _pretrained_needs_teachers(self) -> TeacherModelsConfig:
        if self.mode == "pretrained" and not self.teachers:
            raise ValueError("teacher_models.mode=pretrained needs a non-empty 'teachers' list")
        return self


class CaptionerModelConfig(_Section):
    mode: Literal["bootstrap", "pretrained"] = "bootstrap"
    captioner: OpenClipSpec | None = None
    bootstrap: BootstrapTrainConfig = BootstrapTrainConfig(steps=400, lr=2e-3)

    @model_validator(mode="after")
    def _pretrained_needs_captioner(self) -> CaptionerModelConfig:
        if self.mode == "pretrained" and self.captioner is None:
            raise ValueError("captioner_model.mode=pretrained needs 'captioner'")
        return self


class ClipScoreFilterConfig(_Section):
    mode: Literal["threshold", "top_fraction", "none"] = "top_fraction"
    threshold: float = 0.25
    top_fraction: float = Field(0.7, gt=0, le=1)


class FilteredPoolConfig(_Section):
    min_words: int = 2  # keep captions with MORE than this many words (DataComp basic)
    min_chars: int = 5  # keep captions with MORE than this many characters
    min_image_side: int = 200
    max_aspect_ratio: float = 3.0
    require_english: bool = True
    clip_score: ClipScoreFilterConfig = ClipScoreFilterConfig()
    batch_size: int = 256


class SyntheticCaptionsConfig(_Section):
    num_captions: int = Field(5, ge=1)
    top_p: float = Field(0.9, gt=0, le=1)
    max_length: int = Field(20, ge=4)
    batch_size: int = 128
    seed: int = 0


class ReinforcedDatasetConfig(_Section):
    num_augmentations: int = Field(10, ge=1)
    # RandomResizedCrop scale range and RandAugment settings (METHOD.md 2.4).
    crop_scale: tuple[float, float] = (0.08, 1.0)
    rand_augment_ops: int = 2
    rand_augment_magnitude: int = 9
    rand_augment_bins: int = 31
    shard_size: int = 500
    batch_size: int = 128
    # "npz" (float32) or "pth.gz" (bfloat16), both DataCompDR encodings.
    embedding_format: Literal["npz", "pth.gz"] = "npz"
    include_images: bool = True
    seed: int = 0


class StudentModelConfig(_Section):
    model: str = "MobileCLIP-nano"
    # Start from these weights instead of a fresh init: a student folder or a checkpoint file in
    # clipforge's, open_clip's or Apple's layout (training/models/checkpoints.py). A local
    # path; DVC tracks this string, not the file's content.
    init_checkpoint: str | None = None
    image_size: int = 64
    steps: int = 400
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 40
    grad_clip: float = 1.0
    # MobileCLIP loss weight: L = (1 - lambda) L_CLIP + lambda L_distill.
    distill_lambda: float = Field(1.0, ge=0, le=1)
    use_synthetic_captions: bool = True
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10


class ReparameterizedModelConfig(_Section):
    atol: float = 1e-4
    # export.parity: a random MCi tower embeds every image within ~1e-4 of the others, so a
    # wrong fold can pass `atol`; the batch-centred cosine keeps the input-dependent part honest.
    min_centred_cosine: float = Field(0.9999, ge=-1, le=1)


class CoremlPackageConfig(_Section):
    precision: Literal["float16", "float32"] = "float16"
    minimum_deployment_target: str = "iOS17"
    onnx_opset: int = 18
    onnx_min_cosine: float = 0.9999


class EvaluationConfig(_Section):
    batch_size: int = 256
    # Metric that decides promotion to the registry alias "champion"; higher is better.
    promotion_metric: str = "zeroshot_top1_mean"
    registered_model: str = "clipforge-student"
    champion_alias: str = "champion"
    # Extra clip_benchmark-format webdataset eval sets (local folders), beside the embedded one.
    extra_benchmarks: list[str] = Field(default_factory=list)
    # Batch-1 CPU latency of the evaluated student (training/latency.py): untimed, then timed
    # calls per tower and runtime; a few seconds for the nano student.
    latency_warmup: int = Field(3, ge=0)
    latency_repeats: int = Field(10, ge=1)


class Params(_Section):
    profile: str = "default"
    lake: LakeConfig = LakeConfig()
    mlflow: MlflowConfig = MlflowConfig()
    embedded_corpus: EmbeddedCorpusConfig = EmbeddedCorpusConfig()
    datacomp_pool: DatacompPoolConfig = DatacompPoolConfig()
    teacher_models: TeacherModelsConfig = TeacherModelsConfig()
    captioner_model: CaptionerModelConfig = CaptionerModelConfig()
    filtered_pool: FilteredPoolConfig = FilteredPoolConfig()
    synthetic_captions: SyntheticCaptionsConfig = SyntheticCaptionsConfig()
    reinforced_dataset: ReinforcedDatasetConfig = ReinforcedDatasetConfig()
    student_model: StudentModelConfig = StudentModelConfig()
    reparameterized_model: ReparameterizedModelConfig = ReparameterizedModelConfig()
    coreml_package: CoremlPackageConfig = CoremlPackageConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @field_validator("profile")
    @classmethod
    def _profile_is_name(cls, v: str) -> str:
        if not v or "/" in v:
            raise ValueError("profile must be a plain name")
        return v


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_params_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ValueError(f"params files include each other in a cycle: {path}")
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    base_name = data.pop("base", None)
    if base_name is None:
        return data
    base = _read_params_tree(path.parent / base_name, (*seen, path))
    return _deep_merge(base, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override must look like section.key=value, got {text!r}")
    return [part for part in key.strip().split(".") if part], yaml.safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {text!r} descends into a non-mapping")
        node[keys[-1]] = value
    return data


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read, merge and validate a params file; the single entry point for configuration."""
    data = _read_params_tree(Path(path))
    data = apply_overrides(data, overrides or [])
    return Params.model_validate(data)
