"""Stage ``reparameterized_model``: fold the student's train-time branches (``export.reparameterize``)
and check that the folded model, and its reloaded folder, embed as the unfolded one does.
"""

from __future__ import annotations

import pandas as pd

from clipforge.config import Params
from clipforge.gates.rules import Suite, between, in_set
from clipforge.stage_api import StageContext, StageOutcome
from export.reparameterize import CHECK_CAPTIONS, check_inputs, embed, fold_student, max_abs_diff
from training.models.students import STAGE_MODEL_DIR, TOWERS, load_student, save_student


def quality_suite(params: Params) -> Suite:
    atol = params.reparameterized_model.atol
    min_cosine = params.reparameterized_model.min_centred_cosine
    return Suite(
        required=("tower", "folded_modules", "max_abs_diff", "centred_cosine_min"),
        unique=(("tower",),),
        rules=(
            in_set("tower", list(TOWERS)),
            between("folded_modules", 0),
            between("max_abs_diff", 0, atol, statement=f"0 <= max_abs_diff <= {atol:g} (reparameterized_model.atol)"),
            between(
                "centred_cosine_min",
                min_cosine,
                None,
                statement=f"centred_cosine_min >= {min_cosine:g} (reparameterized_model.min_centred_cosine)",
            ),
        ),
    )


def run(ctx: StageContext) -> StageOutcome:
    atol = ctx.params.reparameterized_model.atol
    source = ctx.inputs["student_model"] / STAGE_MODEL_DIR
    model = load_student(source).eval()

    pixels, tokens = check_inputs(model)
    folded, report = fold_student(model, pixels, tokens)

    out_model = ctx.out_dir / STAGE_MODEL_DIR
    save_student(folded, out_model, reparameterized=True)
    # The published folder must reload into the folded structure with the same outputs.
    reloaded = load_student(out_model)
    diff_reloaded = max_abs_diff(report.unfolded, embed(reloaded, pixels, tokens))

    per_tower = report.folded_by_tower()
    rows = [
        {
            "tower": tower,
            "folded_modules": per_tower[tower],
            "max_abs_diff": max(report.max_abs_diff[tower], diff_reloaded[tower]),
            "folded_vs_unfolded": report.max_abs_diff[tower],
            "reloaded_vs_unfolded": diff_reloaded[tower],
            "centred_cosine_min": report.centred_cosine_min[tower],
        }
        for tower in TOWERS
    ]
    params_before = sum(p.numel() for p in model.parameters())
    params_after = sum(p.numel() for p in reloaded.parameters())
    summary = {
        "variant": model.info.variant,
        "pass_through": not report.blocks,
        "note": (
            "no train-time branches: the model passes through unchanged"
            if not report.blocks
            else f"folded {len(report.blocks)} train-time blocks"
        ),
        "notes_by_tower": report.notes(),
        "folded_by_type": report.folded_by_type(),
        "folded_by_tower": per_tower,
        "atol": atol,
        "max_abs_diff": {row["tower"]: row["max_abs_diff"] for row in rows},
        "within_atol": all(row["max_abs_diff"] <= atol for row in rows),
        "params_before": params_before,
        "params_after": params_after,
        "check_inputs": {"images": int(pixels.shape[0]), "captions": len(CHECK_CAPTIONS)},
        "fold_seconds": round(report.seconds, 3),
        "source": str(source),
    }
    metrics = {
        "folded_modules": float(len(report.blocks)),
        "max_abs_diff_image": rows[0]["max_abs_diff"],
        "max_abs_diff_text": rows[1]["max_abs_diff"],
        "fold_seconds": report.seconds,
    }
    return StageOutcome(manifest=pd.DataFrame(rows), summary=summary, metrics=metrics)
