"""The captioner_model stage: a bootstrapped CoCa folder, or a pretrained spec checked."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import tiny_params_for
from tests.training.corpus_helpers import bootstrap_ctx, write_corpus
from training import captioner_model
from training.models.open_clip_models import CAPTIONER_DIR, load_model


def test_bootstrap_writes_a_coca_folder(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", n=40)
    params = tiny_params_for(tmp_path, ["captioner_model.bootstrap.steps=2", "captioner_model.bootstrap.batch_size=8"])
    ctx = bootstrap_ctx(tmp_path, params, corpus, "captioner_model")
    outcome = captioner_model.run(ctx)
    row = outcome.manifest.iloc[0]
    assert row["name"] == "captioner" and row["kind"] == "coca" and row["num_params"] > 0
    loaded = load_model(ctx.out_dir / CAPTIONER_DIR)
    assert loaded.kind == "coca"
    # Untrained vocabulary columns stay exactly zero through training and saving.
    proj = loaded.model.text_decoder.text_projection
    nonzero = int((proj != 0).any(dim=0).sum())
    assert nonzero == outcome.summary["trained_vocab"] and 0 < nonzero < 100
    assert len(outcome.summary["examples"]) == 2
    # Scored against the corpus' ground truth (KEY.json), each in [0, 1].
    accuracy = {k: v for k, v in row.items() if k.startswith("heldout_caption_") and k.endswith("accuracy")}
    assert len(accuracy) == 3 and all(0 <= v <= 1 for v in accuracy.values())
    assert (ctx.out_dir / "history.parquet").exists() and (ctx.out_dir / "previews" / "loss_curve.png").exists()
