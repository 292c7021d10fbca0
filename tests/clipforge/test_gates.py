"""Quality gates: a manifest that follows docs/stages.md passes; each kind of defect fails with
a readable reason naming the stage, the column and what is wrong.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from chain.spec import CHAIN
from clipforge.config import Params
from clipforge.params_file import load_params
from tests.conftest import REPO, stage_gate

N = 12


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(REPO / "profiles" / "tiny.yaml")


def _pool(n: int = N) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "uid": [f"{i:032x}" for i in range(n)],
            "key": [f"{i:032x}" for i in range(n)],
            "shard": "shards/00000.tar",
            "url": [f"https://example.com/{i}.jpg" for i in range(n)],
            "text": [f"a red circle number {i}" for i in range(n)],
            "width": 64,
            "height": 48,
            "original_width": 640,
            "original_height": 480,
            "sha256": [f"{i:064x}" for i in range(n)],
            "clip_b32_similarity_score": np.linspace(-0.2, 0.4, n),
            # Unknown similarity scores are allowed (NaN).
            "clip_l14_similarity_score": [np.nan] * n,
        }
    )


def good_manifest(stage: str, params: Params) -> pd.DataFrame:
    s = params.synthetic_captions.num_captions
    a = params.reinforced_dataset.num_augmentations
    models = pd.DataFrame(
        {
            "name": ["teacher_0", "teacher_1"],
            "model_name": ["cf-tiny-vit-teacher", "cf-tiny-rn-teacher"],
            "kind": ["clip", "clip"],
            "num_params": [1_000_000, 2_000_000],
            "embed_dim": [64, 64],
            "image_size": [64, 64],
        }
    )
    manifests: dict[str, Callable[[], pd.DataFrame]] = {
        "embedded_corpus": lambda: pd.DataFrame(
            {
                "split": ["pool", "pool", "teacher", "benchmark/shapes", "benchmark/retrieval"],
                "key": ["a", "b", "a", "s0000000", "s0000000"],
                "caption": ["a red circle", "", "a big blue square", "a circle", "two squares"],
                "width": [64, 30, 64, 64, 64],
                "height": [64, 200, 64, 64, 64],
            }
        ),
        "datacomp_pool": _pool,
        "teacher_models": lambda: models,
        "captioner_model": lambda: models.iloc[:1].assign(name="captioner", kind="coca"),
        "filtered_pool": lambda: _pool().assign(clip_score=np.linspace(-0.1, 0.9, N)),
        "synthetic_captions": lambda: pd.DataFrame(
            {
                "uid": [f"{i:032x}" for i in range(N)],
                "num_captions": s,
                "min_caption_chars": 7,
                "mean_caption_words": 4.5,
            }
        ),
        "reinforced_dataset": lambda: pd.DataFrame(
            {
                "uid": [f"{i:032x}" for i in range(N)],
                "key": [f"{i:09d}" for i in range(N)],
                "shard": "shards/00000.tar",
                "num_augs": a,
                "num_syn": s,
                "emb_dim": 128,
                "embeddings_finite": True,
                "image_emb_norm": np.sqrt(2.0),
                "text_emb_norm": np.sqrt(2.0),
            }
        ),
        "student_model": lambda: pd.DataFrame(
            {
                "artifact": ["model/weights.pt", "model/student.json", "checkpoint.pt"],
                "bytes": [1000, 200, 3000],
                "sha256": ["a" * 64, "b" * 64, "c" * 64],
                "final_loss": 2.5,
            }
        ),
        "reparameterized_model": lambda: pd.DataFrame(
            {
                "tower": ["image", "text"],
                "folded_modules": [12, 0],
                "max_abs_diff": [3e-6, 0.0],
                "centred_cosine_min": [0.999998, 1.0],
            }
        ),
        "coreml_package": lambda: pd.DataFrame(
            {
                "file": [
                    "image_encoder.mlpackage",
                    "text_encoder.mlpackage",
                    "image_encoder.onnx",
                    "text_encoder.onnx",
                ],
                "format": ["mlpackage", "mlpackage", "onnx", "onnx"],
                "tower": ["image", "text", "image", "text"],
                "bytes": [100, 100, 100, 100],
                "verified": [True, True, True, True],
                # Core ML cannot run on Linux: no cosine for the mlpackage rows.
                "cosine_min": [np.nan, np.nan, 0.99999, 1.0],
                "centred_cosine_min": [np.nan, np.nan, 0.99995, 1.0],
            }
        ),
        "evaluation": lambda: pd.DataFrame(
            {
                "model": ["student", "student", "chance"],
                "task": ["shapes", "shapes", "retrieval"],
                "kind": ["classification", "classification", "retrieval"],
                "metric": ["top1", "top5", "image_retrieval_recall@5"],
                "value": [0.25, 1.0, 0.0],
            }
        ),
    }
    return manifests[stage]()


def _assert_check_shape(check: dict) -> None:
    assert set(check) == {"expectation", "column", "success", "observed", "reason"}
    assert isinstance(check["reason"], str) and check["reason"]
    json.dumps(check, allow_nan=False)  # the report and the Dagster metadata need strict JSON


@pytest.mark.parametrize("stage", [spec.name for spec in CHAIN])
def test_good_manifest_passes(stage: str, params: Params) -> None:
    gate = stage_gate(stage, good_manifest(stage, params), params)
    assert gate.passed, gate.reason()
    assert len(gate.checks) >= 5
    for check in gate.checks:
        _assert_check_shape(check)
        assert check["success"]
        assert check["reason"].startswith(f"{stage}")


@pytest.mark.parametrize("stage", [spec.name for spec in CHAIN])
def test_empty_manifest_fails(stage: str, params: Params) -> None:
    gate = stage_gate(stage, good_manifest(stage, params).iloc[:0], params)
    assert not gate.passed
    assert f"{stage}: manifest has 0 rows (expected at least 1)" in gate.reason()
    # No columns at all: every required column is reported missing, nothing crashes.
    bare = stage_gate(stage, pd.DataFrame(), params)
    assert not bare.passed
    assert "are missing" in bare.reason()


def _set(column: str, row: int, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        if df[column].dtype.kind in "biuf" and not isinstance(value, (int, float, bool)):
            df[column] = df[column].astype(object)
        df.loc[row, column] = value
        return df

    return mutate


DEFECTS: list[tuple[str, str, Callable[[pd.DataFrame], pd.DataFrame], str]] = [
    (
        "datacomp_pool",
        "all captions empty",
        lambda df: df.assign(text=""),
        "datacomp_pool: column 'text': 100.0% of captions are empty (expected at most 50%)",
    ),
    (
        "datacomp_pool",
        "missing column",
        lambda df: df.drop(columns=["url"]),
        "datacomp_pool: required column 'url' is missing",
    ),
    (
        "datacomp_pool",
        "duplicate uid",
        _set("uid", 1, f"{0:032x}"),
        "datacomp_pool: column 'uid': 2 of 12 rows (16.7%) repeat a value held by another row",
    ),
    ("datacomp_pool", "null uid", _set("uid", 3, None), "datacomp_pool: column 'uid': 1 of 12 values (8.3%) are null"),
    (
        "datacomp_pool",
        "zero width",
        _set("width", 2, 0),
        "column 'width': 1 of 12 values (8.3%) break the rule 'width > 0'",
    ),
    (
        "datacomp_pool",
        "score out of range",
        _set("clip_b32_similarity_score", 0, 1.5),
        "break the rule 'clip_b32_similarity_score >= -1 and clip_b32_similarity_score <= 1' (e.g. 1.5)",
    ),
    ("datacomp_pool", "bad sha256", _set("sha256", 0, "xyz"), "break the rule 'sha256 is 64 lowercase hex chars'"),
    (
        "datacomp_pool",
        "non-numeric height",
        lambda df: df.assign(height="tall"),
        "datacomp_pool: column 'height': could not check 'height > 0'",
    ),
    (
        "filtered_pool",
        "one empty caption",
        _set("text", 4, ""),
        "filtered_pool: column 'text': 1 of 12 captions (8.3%) are empty (expected none)",
    ),
    ("filtered_pool", "clip_score NaN", _set("clip_score", 0, np.nan), "column 'clip_score': 1 of 12 values"),
    (
        "embedded_corpus",
        "unknown split",
        _set("split", 0, "validation"),
        "break the rule 'split is pool, teacher, benchmark/<task> or validation/<task>'",
    ),
    (
        "embedded_corpus",
        "duplicate split+key",
        _set("key", 1, "a"),
        "embedded_corpus: columns 'split', 'key': 2 of 5 rows",
    ),
    ("teacher_models", "zero params", _set("num_params", 0, 0), "break the rule 'num_params > 0'"),
    ("captioner_model", "unknown kind", _set("kind", 0, "vit"), "break the rule 'kind in {'clip', 'coca'}'"),
    (
        "synthetic_captions",
        "wrong caption count",
        _set("num_captions", 0, 1),
        "break the rule 'num_captions == 2 (synthetic_captions.num_captions)'",
    ),
    (
        "reinforced_dataset",
        "wrong augmentation count",
        _set("num_augs", 0, 7),
        "break the rule 'num_augs == 2 (reinforced_dataset.num_augmentations)'",
    ),
    (
        "reinforced_dataset",
        "non-finite embeddings",
        _set("embeddings_finite", 5, False),
        "break the rule 'embeddings_finite is True on every row' (e.g. False)",
    ),
    (
        "student_model",
        "infinite loss",
        lambda df: df.assign(final_loss=np.inf),
        "break the rule 'final_loss is finite'",
    ),
    (
        "student_model",
        "NaN loss",
        lambda df: df.assign(final_loss=np.nan),
        "column 'final_loss': 3 of 3 values (100.0%) are null",
    ),
    (
        "student_model",
        "loss differs between rows",
        _set("final_loss", 0, 1.0),
        "column 'final_loss': 2 distinct values (expected the same value on every row)",
    ),
    ("student_model", "empty file", _set("bytes", 1, 0), "break the rule 'bytes > 0'"),
    (
        "reparameterized_model",
        "outputs differ after folding",
        _set("max_abs_diff", 0, 0.01),
        "break the rule '0 <= max_abs_diff <= 0.0001 (reparameterized_model.atol)' (e.g. 0.01)",
    ),
    (
        "reparameterized_model",
        "fold keeps magnitudes but loses the input-dependent part",
        _set("centred_cosine_min", 0, 0.9),
        "break the rule 'centred_cosine_min >= 0.9999 (reparameterized_model.min_centred_cosine)' (e.g. 0.9)",
    ),
    (
        "coreml_package",
        "low ONNX cosine",
        _set("cosine_min", 2, 0.98),
        "break the rule 'cosine_min >= 0.9999 (coreml_package.onnx_min_cosine)' (e.g. 0.98)",
    ),
    (
        "coreml_package",
        "low ONNX batch-centred cosine",
        _set("centred_cosine_min", 3, 0.5),
        "break the rule 'centred_cosine_min >= 0.9999 (coreml_package.onnx_min_cosine)' (e.g. 0.5)",
    ),
    ("coreml_package", "unverified file", _set("verified", 3, False), "break the rule 'verified is True on every row'"),
    ("evaluation", "metric above 1", _set("value", 0, 1.2), "column 'value': 1 of 3 values (33.3%) break the rule"),
]


@pytest.mark.parametrize(("stage", "defect", "mutate", "expected"), DEFECTS, ids=[f"{s}-{d}" for s, d, *_ in DEFECTS])
def test_defect_fails_with_readable_reason(
    stage: str, defect: str, mutate: Callable[[pd.DataFrame], pd.DataFrame], expected: str, params: Params
) -> None:
    gate = stage_gate(stage, mutate(good_manifest(stage, params)), params)
    assert not gate.passed, f"{defect} was not caught"
    assert expected in gate.reason(), gate.reason()
    for check in gate.checks:
        _assert_check_shape(check)
    # Only the defect fails: the other checks still pass (no cascade of noise).
    assert len(gate.failures) == 1, gate.reason()


def test_pool_tolerates_some_empty_captions(params: Params) -> None:
    pool = _pool(10)
    pool.loc[:4, "text"] = ""  # exactly half empty: still at least `mostly` = 50% captioned
    assert stage_gate("datacomp_pool", pool, params).passed
    pool.loc[5, "text"] = ""
    gate = stage_gate("datacomp_pool", pool, params)
    assert not gate.passed
    assert "60.0% of captions are empty (expected at most 50%)" in gate.reason()


def test_thresholds_follow_params(params: Params) -> None:
    manifest = good_manifest("reparameterized_model", params).assign(max_abs_diff=[5e-4, 0.0])
    assert not stage_gate("reparameterized_model", manifest, params).passed
    loose = params.model_copy(
        update={"reparameterized_model": params.reparameterized_model.model_copy(update={"atol": 1e-3})}
    )
    assert stage_gate("reparameterized_model", manifest, loose).passed


def test_gate_is_fast_and_quiet(params: Params, capfd: pytest.CaptureFixture[str]) -> None:
    pool = _pool(2400)
    stage_gate("datacomp_pool", pool, params)  # warm: the cached context is built once
    capfd.readouterr()
    started = time.perf_counter()
    for _ in range(3):
        gate = stage_gate("datacomp_pool", pool, params)
    per_call = (time.perf_counter() - started) / 3
    assert gate.passed
    assert per_call < 3.0, f"gate took {per_call:.2f}s per call on a 2400-row pool"
    out, err = capfd.readouterr()
    assert "Calculating Metrics" not in out + err  # GX's progress bars are off
    assert os.environ.get("GX_ANALYTICS_ENABLED") == "false"
