"""The chain: which stages exist, what each reads, and where its code is.

Dagster (``assets/``), DVC (``dvc.yaml``, generated from this list by ``chain.dvc_yaml``) and
the ``clipforge`` command all take the stages from :data:`CHAIN`. A stage's code is one module
holding ``run(ctx) -> StageOutcome`` and ``quality_suite(params) -> Suite``; it is imported by
name when the stage runs, so the CLI and the Dagster code location load without torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from clipforge.gates import Suite
from clipforge.stage_api import StageContext, StageOutcome


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    name: str
    # The stage module: ``run(ctx)`` and ``quality_suite(params)``.
    module: str
    # Upstream stages whose published folders this stage reads.
    inputs: tuple[str, ...]
    # params sections the stage reads: the only ones its context exposes, DVC's params deps,
    # what MLflow records.
    sections: tuple[str, ...]
    description: str

    def _module(self) -> ModuleType:
        return importlib.import_module(self.module)

    def load(self) -> Callable[[StageContext], StageOutcome]:
        return self._module().run

    def quality_suite(self, params: Any) -> Suite:
        return self._module().quality_suite(params)


CHAIN: tuple[StageSpec, ...] = (
    StageSpec(
        name="embedded_corpus",
        module="pipelines.embedded_corpus",
        inputs=(),
        sections=("embedded_corpus",),
        description="Generated DataComp-format pool, clean teacher corpus and held-out benchmark (no network).",
    ),
    StageSpec(
        name="datacomp_pool",
        module="pipelines.datacomp_pool",
        inputs=("embedded_corpus",),
        sections=("datacomp_pool", "lake"),
        description="Ingest a DataComp-format pool (local or S3): per-sample manifest, bad samples skipped and counted.",
    ),
    StageSpec(
        name="teacher_models",
        module="training.teacher_models",
        inputs=("embedded_corpus",),
        sections=("teacher_models",),
        description="Resolve the CLIP teacher ensemble, or bootstrap it on the clean teacher corpus.",
    ),
    StageSpec(
        name="captioner_model",
        module="training.captioner_model",
        inputs=("embedded_corpus",),
        sections=("captioner_model",),
        description="Resolve the CoCa captioner, or bootstrap a small one on the clean teacher corpus.",
    ),
    StageSpec(
        name="filtered_pool",
        module="pipelines.filtered_pool",
        inputs=("datacomp_pool", "teacher_models"),
        sections=("filtered_pool",),
        description="DataComp basic filter and CLIP-score filter scored with the teachers.",
    ),
    StageSpec(
        name="synthetic_captions",
        module="pipelines.synthetic_captions",
        inputs=("filtered_pool", "captioner_model"),
        sections=("synthetic_captions",),
        description="CoCa synthetic captions with nucleus sampling, S per image.",
    ),
    StageSpec(
        name="reinforced_dataset",
        module="pipelines.reinforced_dataset",
        inputs=("filtered_pool", "synthetic_captions", "teacher_models"),
        sections=("reinforced_dataset", "synthetic_captions"),
        description="Stored augmentations and teacher-ensemble embeddings, DataCompDR webdataset shards.",
    ),
    StageSpec(
        name="student_model",
        module="training.student_model",
        # teacher_models: read only with student_model.teacher_embeddings = online.
        inputs=("reinforced_dataset", "teacher_models"),
        sections=("student_model",),
        description="Train the student: MobileCLIP's loss and CLIP-KD's, teachers stored or online.",
    ),
    StageSpec(
        name="reparameterized_model",
        module="export.reparameterized_model",
        inputs=("student_model",),
        sections=("reparameterized_model",),
        description="Fold train-time branches into single convolutions and check outputs match.",
    ),
    StageSpec(
        name="coreml_package",
        module="export.coreml_package",
        inputs=("reparameterized_model",),
        sections=("coreml_package",),
        description="Core ML image and text packages and ONNX files, verified.",
    ),
    StageSpec(
        name="evaluation",
        module="training.evaluation",
        inputs=("reparameterized_model", "coreml_package", "embedded_corpus", "teacher_models"),
        sections=("evaluation",),
        description=(
            "Zero-shot classification and retrieval on the benchmark, beside chance and the teachers; "
            "MLflow registry promotion."
        ),
    ),
)

STAGES: dict[str, StageSpec] = {spec.name: spec for spec in CHAIN}
