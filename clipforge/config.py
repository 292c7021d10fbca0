"""Typed configuration: one model per params section, validated once, when the file is loaded.

The models hold no defaults: ``params.yaml`` sets every value, so no code path can run a value
nobody sees, and DVC and MLflow record every value a stage reads. Reading, merging and
overrides are ``clipforge.params_file``; the constraints here turn a bad value into one line
that names the file and the key.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Reusable field types: the constraint is the documentation.
Count = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[float, Field(gt=0)]
Cosine = Annotated[float, Field(ge=-1, le=1)]
# A contrastive batch needs at least two pairs.
BatchSize = Annotated[int, Field(ge=2)]
Text = Annotated[str, Field(min_length=1)]
# The DataCompDR embedding encodings: "npz" (float32) or "pth.gz" (bfloat16).
EmbeddingFormat = Literal["npz", "pth.gz"]
# Core ML compute precision.
Precision = Literal["float16", "float32"]


class _Section(BaseModel):
    # Unknown keys are errors: a typo in params.yaml must not silently fall back to anything.
    model_config = ConfigDict(extra="forbid", frozen=True)


class LakeConfig(_Section):
    # Local folder (relative to the working directory) or s3://bucket/prefix.
    root: Text
    # Custom S3 endpoint (moto, MinIO); None falls back to AWS_ENDPOINT_URL / boto3 defaults.
    endpoint_url: str | None
    region: str | None


class MlflowConfig(_Section):
    tracking_uri: Text
    artifact_location: Text
    experiment: Text


class EmbeddedCorpusConfig(_Section):
    seed: Seed
    pool_size: Count
    teacher_corpus_size: Count
    # Partial captions per teacher-corpus image besides its full one (KEY.txt lines 2..): web
    # text often names one attribute at a time; CLIP teachers draw a random line per step.
    teacher_partial_captions: NonNegative
    # Write KEY.neg.txt (a NegCLIP hard negative per caption line); CLIP teachers use them when present.
    teacher_hard_negatives: bool
    benchmark_size: Count
    # Side of the generated scene canvas before aspect/size distortions.
    image_size: Annotated[int, Field(ge=16)]
    shard_size: Count
    duplicate_fraction: Annotated[float, Field(ge=0, le=0.5)]
    junk_caption_fraction: Fraction
    wrong_caption_fraction: Fraction
    non_english_fraction: Fraction
    # Captions naming only some of the scene's attributes (web alt-text is rarely complete).
    partial_caption_fraction: Fraction
    tiny_image_fraction: Fraction
    extreme_aspect_fraction: Fraction

    @model_validator(mode="after")
    def _fractions_fit(self) -> EmbeddedCorpusConfig:
        captions = (
            self.junk_caption_fraction
            + self.wrong_caption_fraction
            + self.non_english_fraction
            + self.partial_caption_fraction
        )
        if captions > 1:
            raise ValueError(f"the junk, wrong, non-English and partial caption fractions add up to {captions:g} > 1")
        if self.tiny_image_fraction + self.extreme_aspect_fraction > 1:
            raise ValueError("tiny_image_fraction + extreme_aspect_fraction is more than 1")
        return self


class DatacompPoolConfig(_Section):
    # "embedded" reads the generated pool; otherwise a local folder or s3:// URI holding
    # img2dataset shards (*.tar with a parquet beside each) and optional metadata parquet.
    source: Text
    max_image_side: Count


class OpenClipSpec(_Section):
    """A CLIP or CoCa model: an open_clip model name plus pretrained tag or checkpoint path."""

    name: Text
    model: Text
    pretrained: str | None
    # Fixed logit scale of this teacher's distillation target (docs/method.md §2.7).
    logit_scale: Positive


class BootstrapTrainConfig(_Section):
    steps: Count
    batch_size: BatchSize
    lr: Positive
    weight_decay: Annotated[float, Field(ge=0)]
    beta1: Annotated[float, Field(ge=0, lt=1)]
    beta2: Annotated[float, Field(ge=0, lt=1)]
    warmup_steps: NonNegative
    image_size: Count
    seed: Seed
    log_every: Count


class ImagePretrainingConfig(_Section):
    """Supervised pretraining of a bootstrapped teacher's image trunk on the corpus' KEY.json
    facts, before its text tower is tuned against the locked trunk (LiT); steps 0 = none."""

    steps: NonNegative
    batch_size: BatchSize
    lr: Positive
    weight_decay: Annotated[float, Field(ge=0)]
    warmup_steps: NonNegative
    # bf16 autocast on the CPU: 1.5x faster for these small CNNs at equal accuracy (measured).
    precision: Literal["fp32", "bf16"]
    # KEY.json keys (dotted for nested: "main.shape") the trunk learns, one softmax each, with
    # the weight of each key's cross-entropy in the loss.
    facts: Annotated[dict[str, Positive], Field(min_length=1)]


class TeacherModelsConfig(_Section):
    mode: Literal["bootstrap", "pretrained"]
    # For "pretrained": the ensemble, each an open_clip name + tag or local checkpoint path.
    teachers: list[OpenClipSpec]
    bootstrap: BootstrapTrainConfig
    image_pretraining: ImagePretrainingConfig

    @model_validator(mode="after")
    def _pretrained_needs_teachers(self) -> TeacherModelsConfig:
        if self.mode == "pretrained" and not self.teachers:
            raise ValueError("mode pretrained needs a non-empty 'teachers' list")
        return self


class CaptionerModelConfig(_Section):
    mode: Literal["bootstrap", "pretrained"]
    captioner: OpenClipSpec | None
    bootstrap: BootstrapTrainConfig
    # KEY.json key -> weight of a scene-facts cross-entropy on the bootstrapped CoCa's pooled
    # image output, added to its loss times facts_weight; {} for none.
    facts: dict[str, Positive]
    facts_weight: Annotated[float, Field(ge=0)]
    # Nucleus mass of the captions sampled for the bootstrapped captioner's held-out check.
    heldout_top_p: Annotated[float, Field(gt=0, le=1)]

    @model_validator(mode="after")
    def _pretrained_needs_captioner(self) -> CaptionerModelConfig:
        if self.mode == "pretrained" and self.captioner is None:
            raise ValueError("mode pretrained needs 'captioner'")
        return self


class ClipScoreFilterConfig(_Section):
    mode: Literal["threshold", "top_fraction", "none"]
    threshold: Cosine
    top_fraction: Annotated[float, Field(gt=0, le=1)]


class FilteredPoolConfig(_Section):
    min_words: NonNegative  # keep captions with MORE than this many words (DataComp basic)
    min_chars: NonNegative
    min_image_side: Count
    max_aspect_ratio: Annotated[float, Field(ge=1)]
    require_english: bool
    clip_score: ClipScoreFilterConfig
    batch_size: Count


class SyntheticCaptionsConfig(_Section):
    num_captions: Count
    top_p: Annotated[float, Field(gt=0, le=1)]
    max_length: Annotated[int, Field(ge=4)]
    batch_size: Count
    seed: Seed


class ReinforcedDatasetConfig(_Section):
    num_augmentations: Count
    # RandomResizedCrop scale range and RandAugment settings (docs/method.md §2.4).
    crop_scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]]
    rand_augment_ops: NonNegative
    rand_augment_magnitude: NonNegative
    rand_augment_bins: Count
    shard_size: Count
    batch_size: Count
    embedding_format: EmbeddingFormat
    include_images: bool
    seed: Seed

    @field_validator("crop_scale")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError(f"the smallest crop area {value[0]} is above the largest {value[1]}")
        return value

    @model_validator(mode="after")
    def _magnitude_in_range(self) -> ReinforcedDatasetConfig:
        if self.rand_augment_magnitude >= self.rand_augment_bins:
            raise ValueError(
                f"rand_augment_magnitude {self.rand_augment_magnitude} must be below rand_augment_bins "
                f"{self.rand_augment_bins}"
            )
        return self


# CLIP-KD's loss terms, in the order reports list them (training/losses/clip_kd.py).
KD_TERMS: tuple[str, ...] = ("crd", "fd", "mfd", "gd", "icl", "afd")


class ClipKDConfig(_Section):
    # CLIP-KD's loss weights (docs/method.md §3), added to the MobileCLIP loss; 0 turns a term
    # off. The paper's recommendation: crd 1, icl 1, fd 2000 (with distill_lambda 0: CLIP + KD).
    crd: Annotated[float, Field(ge=0)]
    fd: Annotated[float, Field(ge=0)]
    mfd: Annotated[float, Field(ge=0)]
    gd: Annotated[float, Field(ge=0)]
    icl: Annotated[float, Field(ge=0)]
    afd: Annotated[float, Field(ge=0)]
    # MFD: the fraction of image patches (ViT tokens, or pixel patches for a conv tower) hidden.
    mfd_mask_ratio: Annotated[float, Field(gt=0, lt=1)]

    def weights(self) -> dict[str, float]:
        return {t: getattr(self, t) for t in KD_TERMS}


class StreamConfig(_Section):
    """``student_model.loader: stream``: the webdataset pipeline (training/data/streaming.py)."""

    shuffle_buffer: NonNegative  # samples held for shuffling (memory is this, not the dataset)
    shard_shuffle: bool  # a new shard order every epoch
    resampled: bool  # draw shards with replacement, endlessly, per rank and worker


class StudentModelConfig(_Section):
    model: Text
    # Start from these weights instead of a fresh init: a student folder or a checkpoint file in
    # clipforge's, open_clip's or Apple's layout (training/models/checkpoints.py). A local
    # path; DVC tracks this string, not the file's content.
    init_checkpoint: str | None
    image_size: Count
    steps: Count
    batch_size: BatchSize
    lr: Positive
    weight_decay: Annotated[float, Field(ge=0)]
    beta1: Annotated[float, Field(ge=0, lt=1)]
    beta2: Annotated[float, Field(ge=0, lt=1)]
    warmup_steps: NonNegative
    grad_clip: Annotated[float, Field(ge=0)]
    # MobileCLIP loss weight: L = (1 - lambda) L_CLIP + lambda L_distill.
    distill_lambda: Fraction
    use_synthetic_captions: bool
    # Where every loss takes the teachers' embeddings from: the reinforced shards (MobileCLIP's
    # way: no teacher runs) or the teachers run on the same view during training (CLIP-KD's).
    teacher_embeddings: Literal["stored", "online"]
    kd: ClipKDConfig
    seed: Seed
    # memory: every sample decoded once into memory (the embedded scale); stream: shards read
    # through a shuffle buffer (memory independent of the dataset's size).
    loader: Literal["memory", "stream"]
    stream: StreamConfig
    num_workers: NonNegative
    log_every: Count
    # Resumable checkpoints every N steps (0: none before the end), the newest k kept, in a
    # local folder outside the lake (a killed stage publishes nothing): a rerun of the same
    # training resumes from the newest.
    checkpoint_every: NonNegative
    keep_checkpoints: Count
    checkpoint_dir: Text
    # Data-parallel processes (torchrun's launcher: gloo on CPU, NCCL on GPUs); batch_size is
    # the global batch and must split evenly.
    nproc: Count
    # Mixed precision of the towers (the losses stay float32): auto is bf16 autocast on CUDA,
    # float32 on CPU; bf16 forces autocast on any device (CPUs with AMX may gain).
    precision: Literal["auto", "fp32", "bf16"]
    # Gradient accumulation: each process's share of a step's batch in this many micro-batches,
    # the contrastive loss still over the whole batch (features cached, as open_clip does).
    accum_steps: Count

    @model_validator(mode="after")
    def _batch_splits_over_processes(self) -> StudentModelConfig:
        if self.batch_size % (self.nproc * self.accum_steps):
            raise ValueError(
                f"batch_size {self.batch_size} does not split over nproc={self.nproc} processes "
                f"x accum_steps={self.accum_steps} micro-batches"
            )
        return self


class ReparameterizedModelConfig(_Section):
    atol: Positive
    # export.parity: a random MCi tower embeds every image within ~1e-4 of the others, so a
    # wrong fold can pass `atol`; the batch-centred cosine keeps the input-dependent part honest.
    min_centred_cosine: Cosine


class CoremlPackageConfig(_Section):
    precision: Precision
    minimum_deployment_target: Text
    onnx_opset: Annotated[int, Field(ge=13)]
    onnx_min_cosine: Cosine


class EvaluationConfig(_Section):
    batch_size: Count
    # Metric that decides promotion to the registry alias; higher is better.
    promotion_metric: Text
    registered_model: Text
    champion_alias: Text
    # Extra clip_benchmark-format webdataset eval sets (local folders), beside the embedded one.
    extra_benchmarks: list[str]
    # Batch-1 CPU latency of the evaluated student (training/eval/timing.py): untimed, then
    # timed calls per tower and runtime; a few seconds for the nano student.
    latency_warmup: NonNegative
    latency_repeats: Count


class ExperimentArm(_Section):
    """One arm of ``clipforge experiment``: a name and the student_model keys it changes."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    description: Text
    # Overrides of params.student_model (validated against it by Params); seed and steps are
    # the experiment's.
    student_model: dict[str, Any]

    @field_validator("student_model")
    @classmethod
    def _not_seed_or_steps(cls, v: dict[str, Any]) -> dict[str, Any]:
        owned = sorted({"seed", "steps"} & set(v))
        if owned:
            raise ValueError(f"an arm cannot set {', '.join(owned)}: experiment.seeds and experiment.steps do")
        return v


class ExperimentConfig(_Section):
    # The outputs' name (docs/<name>.md, .json, .png, _evals.csv) and the report's title.
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")]
    title: Text
    # Every arm runs once per seed; within a seed all arms share model init and data order.
    seeds: Annotated[list[Seed], Field(min_length=1)]
    steps: Count
    # Benchmark evaluation every this many steps (and at the last step).
    eval_every: Count
    # test: the held-out benchmark, reported in docs/ (never for choices); validation: the
    # tuning split (other seeds), written under reports/ (training/experiments/outputs.py).
    split: Literal["test", "validation"]
    arms: Annotated[list[ExperimentArm], Field(min_length=1)]

    @field_validator("arms")
    @classmethod
    def _unique_names(cls, v: list[ExperimentArm]) -> list[ExperimentArm]:
        names = [arm.name for arm in v]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        return v


def arm_student_config(base: StudentModelConfig, arm: ExperimentArm, *, seed: int, steps: int) -> StudentModelConfig:
    """The student_model section one arm trains with at one seed (validated like params.yaml)."""
    merged = deep_merge(base.model_dump(), arm.student_model)
    return StudentModelConfig.model_validate({**merged, "seed": seed, "steps": steps})


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``; nested mappings merge key by key (a profile over params.yaml,
    an experiment arm over student_model)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class Params(_Section):
    profile: Text
    lake: LakeConfig
    mlflow: MlflowConfig
    embedded_corpus: EmbeddedCorpusConfig
    datacomp_pool: DatacompPoolConfig
    teacher_models: TeacherModelsConfig
    captioner_model: CaptionerModelConfig
    filtered_pool: FilteredPoolConfig
    synthetic_captions: SyntheticCaptionsConfig
    reinforced_dataset: ReinforcedDatasetConfig
    student_model: StudentModelConfig
    reparameterized_model: ReparameterizedModelConfig
    coreml_package: CoremlPackageConfig
    evaluation: EvaluationConfig
    experiment: ExperimentConfig

    @model_validator(mode="after")
    def _arms_fit_the_student(self) -> Params:
        # An arm's overrides are checked once, here, so a typo fails before any training.
        for arm in self.experiment.arms:
            try:
                arm_student_config(self.student_model, arm, seed=0, steps=1)
            except ValidationError as error:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
                raise ValueError(f"experiment arm {arm.name!r} sets student_model {problems}") from None
        return self

    @field_validator("profile")
    @classmethod
    def _profile_is_name(cls, v: str) -> str:
        if "/" in v:
            raise ValueError("profile must be a plain name")
        return v


def fields_with_defaults(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of every field, in ``model`` and the models it nests, that has a default.

    Empty for ``Params``: params.yaml is the one place a value comes from (a test holds it).
    """
    found: list[str] = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        if not field.is_required():
            found.append(dotted)
        for nested in _models_in(field.annotation):
            found += fields_with_defaults(nested, f"{dotted}.")
    return found


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]
