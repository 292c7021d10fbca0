"""Stage ``coreml_package``: Core ML packages and ONNX files of the folded student, verified
(``export.package``).
"""

from __future__ import annotations

from clipforge.config import Params
from clipforge.gates.rules import Suite, all_true, between, in_set, positive
from clipforge.stage_api import StageContext, StageOutcome
from export.package import FORMATS, load_folded_student, package_student
from training.models.students import STAGE_MODEL_DIR, TOWERS


def quality_suite(params: Params) -> Suite:
    bar = params.coreml_package.onnx_min_cosine
    return Suite(
        required=("file", "format", "tower", "bytes", "verified", "cosine_min", "centred_cosine_min"),
        # NaN for mlpackage rows: Core ML cannot run on Linux, so there is no cosine.
        nullable=frozenset({"cosine_min", "centred_cosine_min"}),
        unique=(("file",),),
        rules=(
            in_set("format", sorted(FORMATS.values())),
            in_set("tower", list(TOWERS)),
            positive("bytes"),
            all_true("verified"),
            between("cosine_min", bar, None, statement=f"cosine_min >= {bar:g} (coreml_package.onnx_min_cosine)"),
            between(
                "centred_cosine_min",
                bar,
                None,
                statement=f"centred_cosine_min >= {bar:g} (coreml_package.onnx_min_cosine)",
            ),
        ),
    )


def run(ctx: StageContext) -> StageOutcome:
    source = ctx.inputs["reparameterized_model"] / STAGE_MODEL_DIR
    student = load_folded_student(source)
    result = package_student(student, ctx.out_dir, ctx.params.coreml_package, progress=ctx.progress)
    return StageOutcome(
        manifest=result.manifest, summary={**result.summary, "source": str(source)}, metrics=result.metrics
    )
