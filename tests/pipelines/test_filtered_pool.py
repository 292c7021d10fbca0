"""filtered_pool: DataComp basic rules, the English heuristic, CLIP-score modes with tiny teachers."""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipforge.config import Params
from clipforge.params_file import apply_overrides
from clipforge.stage_api import StageContext, StageOutcome
from pipelines import filtered_pool as filtering
from pipelines.datacomp_pool import MANIFEST_COLUMNS
from pipelines.pool.english import is_english, language_evidence
from pipelines.pool.filters import basic_rule
from pipelines.pool.shards import Sample, read_samples
from tests.conftest import default_params, section, stage_gate, with_changes
from training.data.tar_shards import ShardWriter
from training.models.open_clip_models import load_teachers, save_ensemble_index, save_model


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # The tiny forward passes here are faster on one thread than on two contended ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- basic rules

CFG = section("filtered_pool", min_words=2, min_chars=5, min_image_side=48, max_aspect_ratio=3.0, require_english=True)


@pytest.mark.parametrize(
    ("text", "size", "rule"),
    [
        ("red circles", (64, 64), "caption_words"),  # 2 words: not more than min_words
        ("", (64, 64), "caption_words"),
        ("red blue circles", (64, 64), None),
        ("a b c", (64, 64), "caption_chars"),  # 3 words but 5 characters
        ("a b cd", (64, 64), None),
        ("zwei rote Kreise auf blauem Hintergrund", (64, 64), "english"),
        ("two red circles", (64, 47), "image_side"),
        ("two red circles", (48, 48), None),  # at least min_image_side passes
        ("two red circles", (145, 48), "aspect_ratio"),
        ("two red circles", (48, 144), None),  # exactly max_aspect_ratio passes
        ("zwei", (10, 100), "caption_words"),  # the first failed rule is the one reported
    ],
)
def test_basic_rule_reports_the_first_failed_rule(text: str, size: tuple[int, int], rule: str | None) -> None:
    assert basic_rule(text, size[0], size[1], CFG) == rule


def test_english_rule_can_be_switched_off() -> None:
    cfg = CFG.model_copy(update={"require_english": False})
    assert basic_rule("zwei rote Kreise auf blauem Hintergrund", 64, 64, cfg) is None


# ----------------------------------------------------------------------------- English heuristic


@pytest.mark.parametrize(
    "text",
    [
        "two large red circles on a striped green background",
        "a picture of one small blue star in the top left corner",
        "Orange triangles",  # no function word at all: plain Latin text gets the benefit of the doubt
        "vintage leather handbag, brown",
        "there are three hearts on a dotted white background",
        "café with a view of the sea",  # one accented word does not outweigh English words
    ],
)
def test_english_captions_are_english(text: str) -> None:
    assert is_english(text)


@pytest.mark.parametrize(
    "text",
    [
        "zwei rote Kreise auf blauem Hintergrund",
        "ein kleiner gelber Stern",
        "un grand triangle orange",  # shared words ("triangle", "orange") count for neither side
        "trois petits cercles bleus sur fond blanc à rayures",
        "dos estrellas azules sobre fondo verde",
        "una cruz roja",
        "la casa blanca con un perro",
        "il gatto nero sul tavolo",
        "Привет, как дела",
        "東京タワーの写真",
        "2020",
        "",
    ],
)
def test_foreign_or_letterless_captions_are_not_english(text: str) -> None:
    assert not is_english(text)


def test_language_evidence_counts_each_side() -> None:
    ev = language_evidence("Two red circles und ein Stern")
    assert (ev.words, ev.english_hits, ev.foreign_hits) == (6, 3, 3)
    assert is_english("Two red circles und ein Stern")  # a tie goes to English


# ----------------------------------------------------------------------------- score selection


def test_threshold_mode_keeps_scores_at_or_above_it() -> None:
    cfg = with_changes(default_params().filtered_pool.clip_score, mode="threshold", threshold=0.25)
    keep = filtering.select_by_clip_score(np.array([0.1, 0.25, 0.3, 0.2499]), ["a", "b", "c", "d"], cfg)
    assert keep.tolist() == [False, True, True, False]


def test_top_fraction_keeps_the_best_and_breaks_ties_by_uid() -> None:
    cfg = with_changes(default_params().filtered_pool.clip_score, mode="top_fraction", top_fraction=0.5)
    scores = np.array([0.1, 0.5, 0.3, 0.3, 0.2])
    keep = filtering.select_by_clip_score(scores, ["e", "d", "c", "b", "a"], cfg)
    # ceil(0.5 * 5) = 3: 0.5, then the tie at 0.3 whole, in either order of reading.
    assert keep.tolist() == [False, True, True, True, False]
    cfg = with_changes(default_params().filtered_pool.clip_score, mode="top_fraction", top_fraction=0.4)
    keep = filtering.select_by_clip_score(scores, ["e", "d", "c", "b", "a"], cfg)
    assert keep.tolist() == [False, True, False, True, False]  # tie at 0.3: uid "b" before "c"


def test_none_mode_and_full_fraction_keep_everything() -> None:
    scores = np.array([-0.5, 0.0, 0.9])
    for cfg in (
        with_changes(default_params().filtered_pool.clip_score, mode="none"),
        with_changes(default_params().filtered_pool.clip_score, mode="top_fraction", top_fraction=1.0),
    ):
        assert filtering.select_by_clip_score(scores, ["a", "b", "c"], cfg).all()
    assert filtering.select_by_clip_score(np.zeros(0), [], default_params().filtered_pool.clip_score).shape == (0,)


# ----------------------------------------------------------------------------- tiny teachers


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two randomly initialised tiny ViT teachers (different seeds) as a teacher_models folder."""
    folder = tmp_path_factory.mktemp("teacher_models")
    for seed in (0, 1):
        torch.manual_seed(seed)
        name = f"teacher{seed}"
        save_model(
            folder / name,
            name=name,
            model_name="cf-tiny-vit-teacher",
            model=open_clip.create_model("cf-tiny-vit-teacher"),
        )
    save_ensemble_index(folder, ["teacher0", "teacher1"])
    return folder


def test_ensemble_score_is_the_mean_of_each_teachers_cosine(teacher_dir: Path) -> None:
    teachers = load_teachers(teacher_dir)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)) for i in range(3)]
    captions = ["a red circle", "two blue squares on a white background", ""]
    scores = filtering.ensemble_clip_scores(teachers, images, captions)
    per_teacher = []
    for t in teachers:  # the same cosine, computed here from open_clip's model directly
        with torch.no_grad():
            img = F.normalize(t.model.encode_image(t.normalize_pixels(t.pixels_from_pil(images))), dim=-1)
            txt = F.normalize(t.model.encode_text(t.tokenize(captions)), dim=-1)
        per_teacher.append((img * txt).sum(-1).numpy())
    np.testing.assert_allclose(scores, np.mean(per_teacher, axis=0), atol=1e-5)
    assert not np.allclose(per_teacher[0], per_teacher[1])  # two different teachers really averaged
    assert scores.shape == (3,) and np.all(np.abs(scores) <= 1)


# ----------------------------------------------------------------------------- the stage


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
