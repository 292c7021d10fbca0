"""The teacher_models stage: a bootstrapped ensemble, or pretrained specs resolved and checked."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pandas as pd
import pytest
import torch

from tests.conftest import tiny_params_for
from tests.training.corpus_helpers import bootstrap_ctx, write_corpus
from training import captioner_model, teacher_models
from training.models.open_clip_models import load_teachers


def _checkpoint(tmp_path: Path, model_name: str) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(1)
    model = open_clip.create_model(model_name)
    path = tmp_path / f"{model_name}.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_bootstrap_writes_a_loadable_ensemble(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", n=40)
    params = tiny_params_for(tmp_path, ["teacher_models.bootstrap.steps=2", "teacher_models.bootstrap.batch_size=8"])
    ctx = bootstrap_ctx(tmp_path, params, corpus, "teacher_models")
    outcome = teacher_models.run(ctx)
    m = outcome.manifest
    names = [name for name, _, _ in teacher_models.BOOTSTRAP_TEACHERS]
    assert list(m["name"]) == names and len(names) == 2
    assert {"name", "model_name", "kind", "num_params", "embed_dim", "image_size"} <= set(m.columns)
    assert (m["kind"] == "clip").all() and (m["num_params"] > 0).all() and (m["image_size"] == 64).all()
    assert m["heldout_i2t_top1"].between(0, 1).all() and m["final_loss"].notna().all()
    teachers = load_teachers(ctx.out_dir)
    assert [t.name for t in teachers] == names
    for t in teachers:
        assert 0 < t.logit_scale <= 100
        assert t.encode_text(["a red square"]).shape == (1, t.embed_dim)
    hist = pd.read_parquet(ctx.out_dir / "history.parquet")
    assert set(hist["model"]) == set(names) and len(hist) == 4
    assert (ctx.out_dir / outcome.previews["loss_curve"]).stat().st_size > 1000
    logged = {k for metrics, _ in ctx.tracker.metrics for k in metrics}  # type: ignore[attr-defined]
    assert {f"{n}_loss" for n in names} | {f"{n}_pretrain_loss" for n in names} <= logged
    # The tiny profile pretrains each image trunk (LiT): its history is kept beside the model.
    assert outcome.summary["recipe"] == "lit" and m["pretrain_facts_accuracy"].between(0, 1).all()
    for n in names:
        assert len(pd.read_parquet(ctx.out_dir / f"{n}_{teacher_models.PRETRAIN_HISTORY_SUFFIX}")) == 4
    assert outcome.summary["heldout_samples"] == 2


def test_pretrained_teachers_from_local_checkpoint(tmp_path: Path) -> None:
    path, model = _checkpoint(tmp_path, "cf-tiny-rn-teacher")
    spec = f"[{{name: ckpt-rn, model: cf-tiny-rn-teacher, pretrained: '{path}', logit_scale: 70}}]"
    params = tiny_params_for(tmp_path, ["teacher_models.mode=pretrained", f"teacher_models.teachers={spec}"])
    ctx = bootstrap_ctx(tmp_path, params, tmp_path / "unused", "teacher_models")
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
        teacher_models.run(bootstrap_ctx(tmp_path, params, tmp_path, "t1"))
    unknown = "[{name: t, model: no-such-model, pretrained: x, logit_scale: 100}]"
    params = tiny_params_for(tmp_path, ["teacher_models.mode=pretrained", f"teacher_models.teachers={unknown}"])
    with pytest.raises(KeyError, match="no-such-model"):
        teacher_models.run(bootstrap_ctx(tmp_path, params, tmp_path, "t2"))
    # A CLIP checkpoint cannot serve as the captioner.
    path, _ = _checkpoint(tmp_path, "cf-tiny-rn-teacher")
    spec = f"{{name: c, model: cf-tiny-rn-teacher, pretrained: '{path}', logit_scale: 100}}"
    params = tiny_params_for(tmp_path, ["captioner_model.mode=pretrained", f"captioner_model.captioner={spec}"])
    with pytest.raises(TypeError, match="not an open_clip CoCa"):
        captioner_model.run(bootstrap_ctx(tmp_path, params, tmp_path, "c1"))
