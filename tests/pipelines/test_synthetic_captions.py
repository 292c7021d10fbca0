"""Stage synthetic_captions: S seeded captions per filtered image, skips counted, previews."""

from __future__ import annotations

import io
from pathlib import Path

import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from clipforge.stage_api import NullTracker, StageContext, StageOutcome
from pipelines import synthetic_captions
from pipelines.pool.shards import Sample, ShardFormatError
from tests.conftest import tiny_params_for
from training.data.tar_shards import ShardWriter
from training.models.open_clip_models import save_model

WORDS = (
    "a an one two three red green blue yellow small large circle circles square squares on the left right background"
)


def _jpg(color: tuple[int, int, int], side: int = 40) -> bytes:
    image = Image.new("RGB", (side + 8, side), (120, 120, 120))
    ImageDraw.Draw(image).ellipse((8, 8, side - 8, side - 8), fill=color)
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cf-tiny-coca folder shaped like a bootstrapped one: a small, peaked vocabulary."""
    torch.manual_seed(0)
    model = open_clip.create_model("cf-tiny-coca")
    tok = open_clip.get_tokenizer("cf-tiny-coca")
    ids = torch.tensor(sorted(set(tok.encode(WORDS)) | {tok.eot_token_id}))
    proj = model.text_decoder.text_projection
    with torch.no_grad():
        proj.zero_()
        proj[:, ids] = torch.randn(proj.shape[0], len(ids)) * 1.0
    folder = tmp_path_factory.mktemp("captioner_model") / "captioner"
    save_model(folder, name="captioner", model_name="cf-tiny-coca", model=model, kind="coca", logit_scale=100.0)
    return folder.parent


def _filtered_pool(root: Path, n: int = 9, bad_uid: str | None = None) -> Path:
    colors = [(220, 30, 30), (30, 60, 220), (30, 170, 60)]
    rows = []
    with ShardWriter(root / "shards", relative_to=root, max_count=4) as writer:
        for i in range(n):
            uid = f"{i:032x}"
            jpg = b"garbage" if uid == bad_uid else _jpg(colors[i % 3])
            sample = Sample(key=f"{i:09d}", jpg=jpg, txt=f"web caption {i}", meta={"uid": uid})
            shard = writer.write(sample.key, sample.members())
            rows.append({"uid": uid, "key": f"{i:09d}", "shard": shard, "text": f"web caption {i}"})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet", index=False)
    return root


def _run(
    tmp_path: Path, pool: Path, captioner: Path, name: str, overrides: list[str] | None = None
) -> tuple[StageOutcome, Path]:
    params = tiny_params_for(
        tmp_path,
        ["synthetic_captions.num_captions=3", "synthetic_captions.max_length=8", "synthetic_captions.batch_size=4"]
        + (overrides or []),
    )
    out = tmp_path / name
    out.mkdir()
    ctx = StageContext(
        name="synthetic_captions",
        params=params,
        inputs={"filtered_pool": pool, "captioner_model": captioner},
        out_dir=out,
        tracker=NullTracker(),
        show_progress=False,
    )
    return synthetic_captions.run(ctx), out


def test_captions_every_image_and_counts_skips(tmp_path: Path, captioner_dir: Path) -> None:
    bad = f"{4:032x}"
    pool = _filtered_pool(tmp_path / "pool", bad_uid=bad)
    outcome, out = _run(tmp_path, pool, captioner_dir, "run")
    caps = pd.read_parquet(out / synthetic_captions.CAPTIONS_FILE)
    expected = [f"{i:032x}" for i in range(9) if i != 4]
    assert caps["uid"].tolist() == expected
    assert all(len(row) == 3 for row in caps["syn_text"])
    vocab = set(WORDS.split())
    for row in caps["syn_text"]:
        for text in row:
            assert text and "<" not in text and "." not in text and "!" not in text
            assert set(text.split()) <= vocab, text
    m = outcome.manifest
    assert m["uid"].tolist() == expected and (m["num_captions"] == 3).all()
    assert (m["min_caption_chars"] > 0).all() and (m["mean_caption_words"] > 0).all()
    skipped = pd.read_parquet(out / synthetic_captions.SKIPPED_FILE)
    assert skipped["uid"].tolist() == [bad] and outcome.summary["skipped"] == 1
    assert outcome.metrics["captions_per_second"] > 0
    assert (out / outcome.previews["captions"]).stat().st_size > 1000


def test_captions_are_seeded_and_batch_independent(tmp_path: Path, captioner_dir: Path) -> None:
    pool = _filtered_pool(tmp_path / "pool")
    _, a = _run(tmp_path, pool, captioner_dir, "a")
    _, b = _run(tmp_path, pool, captioner_dir, "b", ["synthetic_captions.batch_size=3"])
    _, c = _run(tmp_path, pool, captioner_dir, "c", ["synthetic_captions.seed=1"])
    ca, cb, cc = (pd.read_parquet(d / synthetic_captions.CAPTIONS_FILE) for d in (a, b, c))
    assert ca["syn_text"].map(list).tolist() == cb["syn_text"].map(list).tolist()
    assert ca["syn_text"].map(list).tolist() != cc["syn_text"].map(list).tolist()


def test_manifest_uid_missing_from_shards_is_an_error(tmp_path: Path, captioner_dir: Path) -> None:
    pool = _filtered_pool(tmp_path / "pool", n=3)
    manifest = pd.read_parquet(pool / "manifest.parquet")
    extra = manifest.iloc[[0]].assign(uid="f" * 32)
    pd.concat([manifest, extra]).to_parquet(pool / "manifest.parquet", index=False)
    with pytest.raises(ShardFormatError, match="lacks"):
        _run(tmp_path, pool, captioner_dir, "run")


def test_caption_seed_depends_on_seed_and_uid() -> None:
    assert synthetic_captions.caption_seed(0, "a") == synthetic_captions.caption_seed(0, "a")
    assert (
        len(
            {
                synthetic_captions.caption_seed(0, "a"),
                synthetic_captions.caption_seed(1, "a"),
                synthetic_captions.caption_seed(0, "b"),
            }
        )
        == 3
    )
    assert 0 <= synthetic_captions.caption_seed(7, "x") < 2**63
