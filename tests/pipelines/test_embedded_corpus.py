"""The embedded corpus: determinism, DataComp/img2dataset/clip_benchmark formats, caption mix."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image

from clipforge.stage_api import StageContext
from pipelines import embedded_corpus as ec
from pipelines.embedded import captions
from tests.conftest import default_params
from tests.pipelines.embedded.conftest import CFG


def test_run_writes_everything(tmp_path: Path) -> None:
    ctx = StageContext(
        name="embedded_corpus",
        params=default_params().model_copy(update={"embedded_corpus": CFG}),
        inputs={},
        out_dir=tmp_path,
        show_progress=False,
    )
    outcome = ec.run(ctx)
    manifest = outcome.manifest
    assert {"split", "key", "caption", "width", "height"} <= set(manifest.columns)
    counts = manifest["split"].value_counts().to_dict()
    assert counts.pop("pool") == CFG.pool_size
    assert counts.pop("teacher") == CFG.teacher_corpus_size
    tasks = ("shape", "color", "count", "background", "retrieval")
    assert counts == {f"{split}/{t}": CFG.benchmark_size for split in ("benchmark", "validation") for t in tasks}
    # Validation is the benchmark's tasks on other scenes: same tasks and classes, other images.
    test_rows = manifest[manifest.split == "benchmark/shape"]
    val_rows = manifest[manifest.split == "validation/shape"]
    assert (tmp_path / "validation/tasks.json").read_text() == (tmp_path / "benchmark/tasks.json").read_text()
    assert (tmp_path / val_rows.shard.iloc[0]).read_bytes() != (tmp_path / test_rows.shard.iloc[0]).read_bytes()
    assert all((tmp_path / shard).is_file() for shard in manifest["shard"].unique())
    assert (tmp_path / "pool/metadata.parquet").is_file() and (tmp_path / "benchmark/tasks.json").is_file()
    truth = pd.read_parquet(tmp_path / ec.GROUND_TRUTH_FILE)
    assert len(truth) == CFG.pool_size and set(truth["caption_kind"]) == set(captions.CAPTION_KINDS)
    assert sum(outcome.summary["pool"]["caption_kinds"].values()) == CFG.pool_size
    assert outcome.metrics["samples_pool"] == CFG.pool_size
    assert set(outcome.previews) >= {"pool_grid", "teacher_grid"}
    for rel in outcome.previews.values():
        with Image.open(tmp_path / rel) as image:
            assert image.format == "PNG" and image.width > 100
