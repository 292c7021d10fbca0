"""filtered_pool: DataComp basic rules, the English heuristic, CLIP-score modes with tiny teachers."""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipforge.config import Params
from clipforge.params_file import apply_overrides
from clipforge.stage_api import StageContext, StageOutcome
from pipelines import filtered_pool as filtering
from pipelines.datacomp_pool import MANIFEST_COLUMNS
from pipelines.pool.shards import Sample, read_samples
from tests.conftest import stage_gate
from training.data.tar_shards import ShardWriter
from training.models.open_clip_models import load_teachers


def jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


# (caption, original size, first failing basic rule) of the crafted pool; 12 samples pass.
POOL_SPEC: list[tuple[str, tuple[int, int], str | None]] = [
    ("IMG_2034.jpg", (64, 64), "caption_words"),
    ("", (64, 64), "caption_words"),
    ("a b c", (64, 64), "caption_chars"),
    ("un cercle rouge sur fond bleu", (64, 64), "english"),
    ("three small red circles", (30, 40), "image_side"),
    ("three small red circles", (200, 50), "aspect_ratio"),
    *((f"{n} blue stars on a green background", (56 + n, 60), None) for n in range(12)),
]


def uid_of(n: int) -> str:
    return hashlib.md5(f"filter-{n}".encode()).hexdigest()


def write_datacomp_pool(folder: Path, shard_size: int = 7) -> pd.DataFrame:
    """A datacomp_pool output folder (shards + manifest) holding POOL_SPEC's samples."""
    rows = []
    with ShardWriter(folder / "shards", folder, max_count=shard_size) as writer:
        for i, (text, (w, h), _) in enumerate(POOL_SPEC):
            uid = uid_of(i)
            meta = {"uid": uid, "url": f"http://example.com/{i}.jpg", "caption": text, "width": w, "height": h}
            meta |= {"original_width": w, "original_height": h, "sha256": "0" * 64}
            shard = writer.write(uid, Sample(key=uid, jpg=jpeg(w, h, i), txt=text, meta=meta).members())
            rows.append(
                {**meta, "key": uid, "shard": shard, "text": text, "source_shard": "x.tar", "source_key": str(i)}
                | {"clip_b32_similarity_score": math.nan, "clip_l14_similarity_score": math.nan}
            )
    manifest = pd.DataFrame(rows)[list(MANIFEST_COLUMNS)]
    manifest.to_parquet(folder / "manifest.parquet", index=False)
    return manifest


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("datacomp_pool")
    write_datacomp_pool(folder)
    return folder


def run_filter(params: Params, out_dir: Path, pool_dir: Path, teacher_dir: Path, *overrides: str) -> StageOutcome:
    params = Params.model_validate(
        apply_overrides(params.model_dump(mode="json"), ["filtered_pool.min_image_side=48", *overrides])
    )
    out_dir.mkdir(parents=True)
    ctx = StageContext(
        "filtered_pool",
        params,
        {"datacomp_pool": pool_dir, "teacher_models": teacher_dir},
        out_dir,
        show_progress=False,
    )
    return filtering.run(ctx)


def test_stage_drops_by_first_rule_and_keeps_the_top_fraction(
    tmp_path: Path, tiny_params: Params, pool_dir: Path, teacher_dir: Path
) -> None:
    out = tmp_path / "out"
    outcome = run_filter(
        tiny_params,
        out,
        pool_dir,
        teacher_dir,
        "filtered_pool.clip_score.mode=top_fraction",
        "filtered_pool.clip_score.top_fraction=0.5",
        "filtered_pool.batch_size=5",  # several batches, one of them partial
    )
    pool = pd.read_parquet(pool_dir / "manifest.parquet")
    dropped = pd.read_parquet(out / filtering.DROPPED_FILE)
    basic = {uid_of(i): rule for i, (_, _, rule) in enumerate(POOL_SPEC) if rule is not None}
    assert dropped[dropped["rule"] != "clip_score"].set_index("uid")["rule"].to_dict() == basic

    manifest = outcome.manifest
    assert len(manifest) == 6 and (dropped["rule"] == "clip_score").sum() == 6  # ceil(0.5 * 12) kept
    assert list(manifest.columns) == [*pool.columns, "clip_score"]
    assert set(manifest["uid"]).isdisjoint(dropped["uid"]) and len(manifest) + len(dropped) == len(pool)
    clip_dropped = dropped[dropped["rule"] == "clip_score"]["clip_score"]
    assert manifest["clip_score"].min() >= clip_dropped.max()
    assert dropped[dropped["rule"] != "clip_score"]["clip_score"].isna().all()  # never scored

    # Kept samples are copied unchanged into shards the manifest points at.
    originals = {s.key: s for shard in pool["shard"].unique() for s in read_samples(pool_dir / shard)}
    written = {s.key: s for shard in manifest["shard"].unique() for s in read_samples(out / shard)}
    assert set(written) == set(manifest["key"])
    for key, sample in written.items():
        assert (sample.jpg, sample.txt, sample.meta) == (originals[key].jpg, originals[key].txt, originals[key].meta)

    # The recorded score is the ensemble's score of that image and caption.
    teachers = load_teachers(teacher_dir)
    row = manifest.iloc[0]
    with Image.open(io.BytesIO(written[row["key"]].jpg)) as image:
        expected = filtering.ensemble_clip_scores(teachers, [image.convert("RGB")], [row["text"]])[0]
    assert row["clip_score"] == pytest.approx(expected, abs=1e-5)

    summary = outcome.summary
    assert summary["dropped_by_rule"] == {
        "caption_words": 2,
        "caption_chars": 1,
        "english": 1,
        "image_side": 1,
        "aspect_ratio": 1,
        "clip_score": 6,
    }
    assert summary["basic_filter_survivors"] == 12 and summary["kept"] == 6
    assert stage_gate("filtered_pool", manifest, tiny_params).passed
    for label, rel in outcome.previews.items():
        assert label in {"kept", "dropped"} and (out / rel).stat().st_size > 0


def test_threshold_and_none_modes(tmp_path: Path, tiny_params: Params, pool_dir: Path, teacher_dir: Path) -> None:
    everything = run_filter(tiny_params, tmp_path / "none", pool_dir, teacher_dir, "filtered_pool.clip_score.mode=none")
    assert len(everything.manifest) == 12  # every basic-filter survivor, each with a score
    scores = everything.manifest["clip_score"]
    assert scores.between(-1, 1).all()

    threshold = float(scores.median())
    outcome = run_filter(
        tiny_params,
        tmp_path / "threshold",
        pool_dir,
        teacher_dir,
        "filtered_pool.clip_score.mode=threshold",
        f"filtered_pool.clip_score.threshold={threshold!r}",
    )
    expected = set(everything.manifest.loc[scores >= threshold, "uid"])
    assert set(outcome.manifest["uid"]) == expected and 0 < len(expected) < 12


def test_keeping_nothing_is_an_error(tmp_path: Path, tiny_params: Params, pool_dir: Path, teacher_dir: Path) -> None:
    with pytest.raises(ValueError, match="kept no sample"):
        run_filter(
            tiny_params,
            tmp_path / "out",
            pool_dir,
            teacher_dir,
            "filtered_pool.clip_score.mode=threshold",
            "filtered_pool.clip_score.threshold=1.0",  # no image-caption cosine reaches 1
        )
