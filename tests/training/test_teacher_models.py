"""Stages teacher_models / captioner_model: corpus reading, augmentation, training, outputs."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

import open_clip
import pandas as pd
import pytest
import torch
from open_clip.loss import CoCaLoss
from PIL import Image, ImageDraw

from clipforge.config import Params
from clipforge.stage_api import NullTracker, StageContext
from tests.conftest import default_params, tiny_params_for, with_changes
from training import captioner_model, teacher_models
from training.data.embedded_layout import TEACHER_SHARDS_DIR
from training.data.teacher_corpus import holdout_split, random_resized_crop, read_corpus
from training.eval.heldout import retrieval_top1
from training.models.open_clip_models import load_model, load_teachers
from training.optim import cosine_lr
from training.trainers.clip_teacher import train_clip
from training.trainers.coca_captioner import CaptionVocab, coca_losses

COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (240, 220, 30)}
SHAPES = ("square", "circle")


def _scene(color: str, shape: str, side: int = 32) -> Image.Image:
    image = Image.new("RGB", (side, side), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    box = (side // 4, side // 4, 3 * side // 4, 3 * side // 4)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLORS[color])
    return image


def _jpg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_corpus(root: Path, n: int = 40, bad: bool = False) -> Path:
    """An embedded_corpus-like folder: teacher_corpus/shards/*.tar with KEY.jpg/.txt/.json."""
    shards = root / TEACHER_SHARDS_DIR
    shards.mkdir(parents=True)
    combos = [(c, s) for c in COLORS for s in SHAPES]
    with tarfile.open(shards / "00000.tar", "w") as tar:
        for i in range(n):
            color, shape = combos[i % len(combos)]
            key = f"{i:06d}"
            _add(tar, f"{key}.jpg", _jpg(_scene(color, shape)))
            _add(tar, f"{key}.txt", f"a {color} {shape} on a grey background".encode())
            _add(tar, f"{key}.json", json.dumps({"color": color, "shape": shape}).encode())
        if bad:
            _add(tar, "bad001.jpg", b"not a jpeg")
            _add(tar, "bad001.txt", b"a broken image")
            _add(tar, "bad002.jpg", _jpg(_scene("red", "square")))  # no caption
            _add(tar, "bad003.jpg", _jpg(_scene("red", "square")))
            _add(tar, "bad003.txt", b"   ")
    return root


def _ctx(tmp_path: Path, params: Params, corpus: Path, name: str) -> StageContext:
    out = tmp_path / name
    out.mkdir()
    return StageContext(
        name=name,
        params=params,
        inputs={"embedded_corpus": corpus},
        out_dir=out,
        tracker=NullTracker(),
        show_progress=False,
    )


# ---------------------------------------------------------------- pieces


def test_cosine_lr_warms_up_then_decays() -> None:
    lrs = [cosine_lr(s, 100, 10, 1e-3) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] < 1e-6 and cosine_lr(55, 100, 10, 1e-3) == pytest.approx(0.5e-3)
    assert cosine_lr(500, 100, 10, 1e-3, min_lr=1e-5) == pytest.approx(1e-5)
    with pytest.raises(ValueError):
        cosine_lr(0, 0, 0, 1e-3)


def test_read_corpus_decodes_and_counts_skips(tmp_path: Path) -> None:
    root = write_corpus(tmp_path / "corpus", n=10, bad=True)
    corpus = read_corpus(root / TEACHER_SHARDS_DIR, 48)
    assert len(corpus) == 10 and corpus.images.shape == (10, 3, 48, 48) and corpus.images.dtype == torch.uint8
    assert corpus.captions[0] == "a red square on a grey background"
    assert dict(corpus.skipped) == {"undecodable image": 1, "missing image or caption": 1, "empty caption": 1}
    with pytest.raises(FileNotFoundError, match="no teacher corpus shards"):
        read_corpus(tmp_path / "nowhere", 48)


def test_random_resized_crop_is_seeded_and_keeps_content() -> None:
    images = torch.zeros(4, 3, 48, 48, dtype=torch.uint8)
    images[:, 0] = 255  # pure red
    a = random_resized_crop(images, 32, torch.Generator().manual_seed(0))
    assert a.shape == (4, 3, 32, 32) and torch.allclose(a[:, 0], torch.ones(4, 32, 32), atol=1e-5)
    assert float(a[:, 1:].abs().max()) < 1e-6
    split = torch.zeros(64, 3, 48, 48, dtype=torch.uint8)
    split[..., 24:] = 255  # left half black, right half white: crops see different parts
    b1 = random_resized_crop(split, 32, torch.Generator().manual_seed(1))
    b2 = random_resized_crop(split, 32, torch.Generator().manual_seed(1))
    assert torch.equal(b1, b2)
    means = b1.mean(dim=(1, 2, 3))
    assert float(means.std()) > 0.05  # crops differ in position and size
    assert float(b1.min()) >= 0.0 and float(b1.max()) <= 1.0


def test_holdout_split_is_disjoint_and_seeded() -> None:
    train, held = holdout_split(200, 0.05, seed=3)
    assert len(held) == 10 and len(train) == 190
    assert set(train.tolist()).isdisjoint(held.tolist()) and len(set(train.tolist()) | set(held.tolist())) == 200
    assert torch.equal(held, holdout_split(200, 0.05, seed=3)[1])
    assert not torch.equal(held, holdout_split(200, 0.05, seed=4)[1])


def test_retrieval_top1_counts_duplicate_captions_as_hits() -> None:
    emb = torch.eye(3)
    assert retrieval_top1(emb, emb, ["a", "b", "c"]) == (1.0, 1.0)
    swapped = emb[[1, 0, 2]]
    assert retrieval_top1(emb, swapped, ["a", "b", "c"]) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert retrieval_top1(emb, swapped, ["a", "a", "c"]) == (1.0, 1.0)


def test_restricted_caption_loss_equals_full_vocabulary_loss() -> None:
    torch.manual_seed(0)
    model = open_clip.create_model(captioner_model.BOOTSTRAP_CAPTIONER)
    tokens = open_clip.get_tokenizer(captioner_model.BOOTSTRAP_CAPTIONER)(
        ["a red square", "two blue circles on the left"]
    )
    proj = model.text_decoder.text_projection
    vocab = CaptionVocab.from_tokens(tokens, proj.shape[1])
    with torch.no_grad():
        proj.normal_(0, 0.1)
        mask = torch.ones(proj.shape[1], dtype=torch.bool)
        mask[vocab.ids] = False
        proj[:, mask] = 0.0
    pixels = torch.randn(2, 3, 64, 64)
    loss_fn = CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0)
    with torch.no_grad():
        contrastive, caption = coca_losses(model, pixels, tokens, vocab, loss_fn)
        out = model(pixels, tokens)  # open_clip's own forward: full 49408-way logits
        ref_contrastive, ref_caption = loss_fn(
            out["image_features"], out["text_features"], out["logits"], out["labels"], out["logit_scale"]
        )
    assert float(caption) == pytest.approx(float(ref_caption), rel=1e-5)
    assert float(contrastive) == pytest.approx(float(ref_contrastive), rel=1e-5)
    assert float(caption) > 1.0  # untrained: near-uniform over the vocabulary, not trivially 0


def test_clip_training_learns_the_toy_corpus(tmp_path: Path) -> None:
    corpus = read_corpus(write_corpus(tmp_path / "c", n=64) / TEACHER_SHARDS_DIR, 96)
    cfg = with_changes(
        default_params().teacher_models.bootstrap, steps=30, batch_size=16, lr=2e-3, warmup_steps=3, image_size=64
    )
    result = train_clip("cf-tiny-rn-teacher", corpus, torch.arange(len(corpus)), cfg, label="rn")
    hist = result.history
    assert list(hist.columns[:4]) == ["step", "lr", "loss", "logit_scale"] and len(hist) == 30
    assert hist["loss"].tail(5).mean() < 0.6 * hist["loss"].head(3).mean()


# ---------------------------------------------------------------- stages


def test_run_teachers_bootstrap_writes_loadable_ensemble(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", n=40)
    params = tiny_params_for(tmp_path, ["teacher_models.bootstrap.steps=2", "teacher_models.bootstrap.batch_size=8"])
    ctx = _ctx(tmp_path, params, corpus, "teacher_models")
    outcome = teacher_models.run(ctx)
    m = outcome.manifest
    assert list(m["name"]) == ["vit-teacher", "rn-teacher"]
    assert {"name", "model_name", "kind", "num_params", "embed_dim", "image_size"} <= set(m.columns)
    assert (m["kind"] == "clip").all() and (m["num_params"] > 0).all() and (m["image_size"] == 64).all()
    assert m["heldout_i2t_top1"].between(0, 1).all() and m["final_loss"].notna().all()
    teachers = load_teachers(ctx.out_dir)
    assert [t.name for t in teachers] == ["vit-teacher", "rn-teacher"]
    for t in teachers:
        assert 0 < t.logit_scale <= 100
        assert t.encode_text(["a red square"]).shape == (1, t.embed_dim)
    hist = pd.read_parquet(ctx.out_dir / "history.parquet")
    assert set(hist["model"]) == {"vit-teacher", "rn-teacher"} and len(hist) == 4
    assert (ctx.out_dir / outcome.previews["loss_curve"]).stat().st_size > 1000
    logged = {k for metrics, _ in ctx.tracker.metrics for k in metrics}  # type: ignore[attr-defined]
    assert "vit-teacher_loss" in logged and "rn-teacher_loss" in logged
    assert outcome.summary["heldout_samples"] == 2


def test_run_captioner_bootstrap_writes_coca_folder(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", n=40)
    params = tiny_params_for(tmp_path, ["captioner_model.bootstrap.steps=2", "captioner_model.bootstrap.batch_size=8"])
    ctx = _ctx(tmp_path, params, corpus, "captioner_model")
    outcome = captioner_model.run(ctx)
    row = outcome.manifest.iloc[0]
    assert row["name"] == "captioner" and row["kind"] == "coca" and row["num_params"] > 0
    loaded = load_model(ctx.out_dir / captioner_model.CAPTIONER_DIR)
    assert loaded.kind == "coca"
    # Untrained vocabulary columns stay exactly zero through training and saving.
    proj = loaded.model.text_decoder.text_projection
    nonzero = int((proj != 0).any(dim=0).sum())
    assert nonzero == outcome.summary["trained_vocab"] and 0 < nonzero < 100
    assert len(outcome.summary["examples"]) == 2
    assert (ctx.out_dir / "history.parquet").exists() and (ctx.out_dir / "previews" / "loss_curve.png").exists()


def _checkpoint(tmp_path: Path, model_name: str) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(1)
    model = open_clip.create_model(model_name)
    path = tmp_path / f"{model_name}.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_pretrained_teachers_from_local_checkpoint(tmp_path: Path) -> None:
    path, model = _checkpoint(tmp_path, "cf-tiny-rn-teacher")
    spec = f"[{{name: ckpt-rn, model: cf-tiny-rn-teacher, pretrained: '{path}', logit_scale: 70}}]"
    params = tiny_params_for(tmp_path, ["teacher_models.mode=pretrained", f"teacher_models.teachers={spec}"])
    ctx = _ctx(tmp_path, params, tmp_path / "unused", "teacher_models")
    outcome = teacher_models.run(ctx)
    assert list(outcome.manifest["name"]) == ["ckpt-rn"]
    (teacher,) = load_teachers(ctx.out_dir)
    assert teacher.logit_scale == 70
    assert not (ctx.out_dir / "ckpt-rn" / "weights.pt").exists()  # a reference, not a copy
    ref = model.state_dict()
    for key, value in teacher.model.state_dict().items():
        assert torch.equal(value, ref[key]), key


def test_pretrained_errors_are_clear(tmp_path: Path) -> None:
    missing = f"[{{name: t, model: cf-tiny-rn-teacher, pretrained: '{tmp_path / 'missing.pt'}', logit_scale: 100}}]"
    params = tiny_params_for(tmp_path, ["teacher_models.mode=pretrained", f"teacher_models.teachers={missing}"])
    with pytest.raises(FileNotFoundError, match="neither a checkpoint file nor a known tag"):
        teacher_models.run(_ctx(tmp_path, params, tmp_path, "t1"))
    unknown = "[{name: t, model: no-such-model, pretrained: x, logit_scale: 100}]"
    params = tiny_params_for(tmp_path, ["teacher_models.mode=pretrained", f"teacher_models.teachers={unknown}"])
    with pytest.raises(KeyError, match="no-such-model"):
        teacher_models.run(_ctx(tmp_path, params, tmp_path, "t2"))
    # A CLIP checkpoint cannot serve as the captioner.
    path, _ = _checkpoint(tmp_path, "cf-tiny-rn-teacher")
    spec = f"{{name: c, model: cf-tiny-rn-teacher, pretrained: '{path}', logit_scale: 100}}"
    params = tiny_params_for(tmp_path, ["captioner_model.mode=pretrained", f"captioner_model.captioner={spec}"])
    with pytest.raises(TypeError, match="not an open_clip CoCa"):
        captioner_model.run(_ctx(tmp_path, params, tmp_path, "c1"))


def test_bootstrap_image_size_must_match_config(tmp_path: Path) -> None:
    corpus = read_corpus(write_corpus(tmp_path / "c", n=8) / TEACHER_SHARDS_DIR, 48)
    cfg = with_changes(default_params().teacher_models.bootstrap, steps=1, batch_size=4, image_size=32)
    with pytest.raises(ValueError, match="image_size=32"):
        train_clip("cf-tiny-rn-teacher", corpus, torch.arange(8), cfg, label="x")
