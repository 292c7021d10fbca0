"""The reinforced_dataset stage on tiny inputs built here: two random tiny teachers, a few images."""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image

from clipforge.stage_api import StageContext, StageOutcome
from pipelines.pool.reinforcement import augmentations_for
from pipelines.reinforced_dataset import run
from tests.conftest import params_with, section
from training.data.augment import replay_aug
from training.data.dr_format import DRMeta, read_shard
from training.models.open_clip_models import load_teachers, save_ensemble_index, save_model

NUM_AUGS, NUM_SYN = 3, 2
SIZES = [(40, 30), (64, 64), (50, 80), (33, 47), (70, 45), (36, 36)]


def _jpg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # The test machine's cores are shared: OpenMP threads that spin against other processes make
    # tiny forward passes ~10x slower than one thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reinforce_inputs")
    pool = root / "filtered_pool"
    (pool / "shards").mkdir(parents=True)
    rows, caption_rows = [], []
    with tarfile.open(pool / "shards" / "00000.tar", "w") as tar:
        for k, (w, h) in enumerate(SIZES):
            uid = f"{k:032x}"
            jpg = _jpg(w, h, k)
            caption = f"a photo of thing number {k}"
            meta = {
                "uid": uid,
                "url": f"http://x/{k}.jpg",
                "caption": caption,
                "width": w,
                "height": h,
                "sha256": hashlib.sha256(jpg).hexdigest(),
            }
            key = f"{k:06d}"
            _add(tar, f"{key}.jpg", jpg)
            _add(tar, f"{key}.txt", caption.encode())
            _add(tar, f"{key}.json", json.dumps(meta).encode())
            rows.append({"uid": uid, "key": key, "shard": "shards/00000.tar", "text": caption})
            if k != 4:  # sample 4 has no synthetic captions
                num = NUM_SYN if k != 3 else 1  # sample 3 has too few
                caption_rows.append({"uid": uid, "syn_text": [f"synthetic {k}.{s}" for s in range(num)]})
        # A broken image, with captions: skipped as bad_image.
        bad_uid = "f" * 32
        _add(tar, "000099.jpg", b"\xff\xd8 truncated")
        _add(tar, "000099.txt", b"broken")
        _add(tar, "000099.json", json.dumps({"uid": bad_uid, "sha256": "0"}).encode())
        rows.append({"uid": bad_uid, "key": "000099", "shard": "shards/00000.tar", "text": "broken"})
        caption_rows.append({"uid": bad_uid, "syn_text": ["x", "y"]})
    pd.DataFrame(rows).to_parquet(pool / "manifest.parquet", index=False)

    captions = root / "synthetic_captions"
    captions.mkdir()
    caption_rows.append({"uid": "e" * 32, "syn_text": ["no such", "pool sample"]})
    pd.DataFrame(caption_rows).to_parquet(captions / "captions.parquet", index=False)

    teachers = root / "teacher_models"
    torch.manual_seed(0)
    for name, model_name, scale in (("vit", "cf-tiny-vit-teacher", 100.0), ("rn", "cf-tiny-rn-teacher", 70.0)):
        model = open_clip.create_model(model_name)
        save_model(teachers / name, name=name, model_name=model_name, model=model, logit_scale=scale)
    save_ensemble_index(teachers, ["vit", "rn"])
    return {"filtered_pool": pool, "synthetic_captions": captions, "teacher_models": teachers}


def _run(inputs: dict[str, Path], out_dir: Path, **section: object) -> StageOutcome:
    params = params_with(
        **{
            "synthetic_captions": {"num_captions": NUM_SYN},
            "reinforced_dataset": {
                "num_augmentations": NUM_AUGS,
                "shard_size": 2,
                "batch_size": 4,
                "seed": 3,
                **section,
            },
        }
    )
    out_dir.mkdir(parents=True)
    ctx = StageContext(name="reinforced_dataset", params=params, inputs=inputs, out_dir=out_dir, show_progress=False)
    return run(ctx)


@pytest.fixture(scope="module")
def first(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StageOutcome]:
    out = tmp_path_factory.mktemp("reinforce_out") / "a"
    return out, _run(inputs, out)


def _samples(out: Path) -> dict:
    return {s.uid: s for shard in sorted((out / "shards").glob("*.tar")) for s in read_shard(shard)}


def test_manifest_summary_and_meta(first: tuple[Path, StageOutcome]) -> None:
    out, outcome = first
    manifest = outcome.manifest
    kept = [f"{k:032x}" for k in (0, 1, 2, 5)]
    assert list(manifest["uid"]) == kept
    assert manifest["uid"].is_unique
    assert (manifest["num_augs"] == NUM_AUGS).all() and (manifest["num_syn"] == NUM_SYN).all()
    assert (manifest["emb_dim"] == 512).all() and manifest["embeddings_finite"].all()
    # Each of the two teacher parts is unit-norm, so each concatenated row has norm sqrt(2).
    np.testing.assert_allclose(manifest["image_emb_norm"], math.sqrt(2), atol=1e-5)
    np.testing.assert_allclose(manifest["text_emb_norm"], math.sqrt(2), atol=1e-5)
    assert list(manifest["shard"]) == ["shards/00000.tar", "shards/00000.tar", "shards/00001.tar", "shards/00001.tar"]
    assert outcome.summary["skipped"] == {
        "bad_image": 1,
        "missing_synthetic_captions": 1,
        "too_few_synthetic_captions": 1,
    }
    assert outcome.summary["samples"] == 4 and outcome.summary["shards"] == 2
    assert outcome.summary["captions_unused"] == 3  # too few, broken image, pool-less uid
    assert (out / outcome.previews["augmentations"]).is_file()
    meta = DRMeta.read(out)
    assert meta.teachers == ("vit", "rn") and meta.teacher_dims == (256, 256)
    assert meta.logit_scales == (100.0, 70.0) and meta.image_sizes == (64, 64)
    assert (meta.num_augmentations, meta.num_captions) == (NUM_AUGS, NUM_SYN)


def test_shards_hold_the_teachers_embeddings_of_the_replayed_views(
    first: tuple[Path, StageOutcome], inputs: dict[str, Path]
) -> None:
    out, _ = first
    samples = _samples(out)
    teachers = load_teachers(inputs["teacher_models"])
    cfg = section("reinforced_dataset", num_augmentations=NUM_AUGS, seed=3)
    for k in (0, 2):
        uid = f"{k:032x}"
        sample = samples[uid]
        image = Image.open(io.BytesIO(sample.jpg)).convert("RGB")
        assert hashlib.sha256(sample.jpg).hexdigest() == sample.sha256
        assert sample.param_aug == augmentations_for(uid, image.width, image.height, cfg)
        assert sample.image_emb.shape == (NUM_AUGS, 512) and sample.text_emb.shape == (1 + NUM_SYN, 512)
        assert sample.txt == f"a photo of thing number {k}"
        assert sample.captions == [f"synthetic {k}.{s}" for s in range(NUM_SYN)]
        for t, cols in zip(teachers, (slice(0, 256), slice(256, 512)), strict=True):
            views = torch.stack([replay_aug(image, p, t.image_size) for p in sample.param_aug])
            np.testing.assert_allclose(sample.image_emb[:, cols], t.encode_image(views).numpy(), atol=1e-5)
            texts = [sample.txt, *sample.captions]
            np.testing.assert_allclose(sample.text_emb[:, cols], t.encode_text(texts).numpy(), atol=1e-5)
            np.testing.assert_allclose(np.linalg.norm(sample.image_emb[:, cols], axis=1), 1.0, atol=1e-5)


def test_rerun_with_other_batching_sharding_and_format_gives_the_same_data(
    first: tuple[Path, StageOutcome], inputs: dict[str, Path], tmp_path: Path
) -> None:
    out_a, outcome_a = first
    out_b = tmp_path / "b"
    outcome_b = _run(inputs, out_b, shard_size=3, batch_size=7, embedding_format="pth.gz", include_images=False)
    assert list(outcome_b.manifest["uid"]) == list(outcome_a.manifest["uid"])
    assert sorted(p.name for p in (out_b / "shards").glob("*.tar")) == ["00000.tar", "00001.tar"]
    a, b = _samples(out_a), _samples(out_b)
    for uid, sample in a.items():
        other = b[uid]
        assert other.jpg is None and other.txt is None
        assert other.param_aug == sample.param_aug
        bf16 = torch.from_numpy(sample.image_emb).bfloat16().float().numpy()
        np.testing.assert_allclose(other.image_emb, bf16, atol=1e-2)
        np.testing.assert_allclose(other.text_emb, sample.text_emb, atol=1e-2)
    # Identical settings reproduce identical shards.
    out_c = tmp_path / "c"
    _run(inputs, out_c)
    for shard in sorted((out_a / "shards").glob("*.tar")):
        assert (out_c / "shards" / shard.name).read_bytes() == shard.read_bytes()


def test_augmentations_depend_only_on_seed_and_uid() -> None:
    cfg = section("reinforced_dataset", num_augmentations=4, seed=3)
    same = augmentations_for("abc", 60, 40, cfg)
    assert same == augmentations_for("abc", 60, 40, cfg)
    assert same != augmentations_for("abd", 60, 40, cfg)
    other_seed = cfg.model_copy(update={"seed": 4})
    assert same != augmentations_for("abc", 60, 40, other_seed)
    assert len(same) == 4
