"""The chain's first stages on S3 (moto's server) give the same result as on local disk.

A generated pool is put into ``s3://src/pool/``; ``datacomp_pool`` ingests it from there and
``filtered_pool`` filters it, both through the real runner with the lake itself on S3
(``s3://lake/run``). The same two stages run on a local lake with the pool as the embedded
corpus. Manifests, shard bytes and CLIP scores must agree.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import boto3
import open_clip
import pandas as pd
import pytest
import torch

from chain.runner import run_stage
from clipforge.config import Params
from clipforge.lake import LATEST_POINTER, Lake, open_lake
from clipforge.params_file import apply_overrides
from training.models.open_clip_models import save_ensemble_index, save_model

PASSED_REPORT = {"gate": {"passed": True, "checks": []}}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # Tiny forward passes: one thread beats two contended ones on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def with_overrides(params: Params, *overrides: str) -> Params:
    return Params.model_validate(apply_overrides(params.model_dump(mode="json"), list(overrides)))


def make_pool(folder: Path, params: Params) -> None:
    from pipelines.embedded_corpus import generate_pool

    generate_pool(folder, params.embedded_corpus)


def make_teachers(folder: Path) -> None:
    """Two tiny randomly initialised teachers (a ViT and a ResNet) and their ensemble index."""
    for seed, model_name in enumerate(("cf-tiny-vit-teacher", "cf-tiny-rn-teacher")):
        torch.manual_seed(seed)
        save_model(
            folder / f"t{seed}",
            name=f"t{seed}",
            model_name=model_name,
            model=open_clip.create_model(model_name),
            logit_scale=100.0,
        )
    save_ensemble_index(folder, ["t0", "t1"])


def publish_folder(lake: Lake, stage: str, src: Path | None) -> None:
    """Publish a hand-made stage output (the runner requires a passed gate in report.json)."""
    with lake.publish(stage) as out:
        if src is not None:
            shutil.copytree(src, out, dirs_exist_ok=True)
        (out / "report.json").write_text(json.dumps(PASSED_REPORT))


def upload_tree(client: object, folder: Path, bucket: str, prefix: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")  # type: ignore[attr-defined]


def shard_digests(stage_dir: Path) -> dict[str, str]:
    return {
        p.relative_to(stage_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((stage_dir / "shards").glob("*.tar"))
    }


def test_first_two_stages_agree_on_s3_and_local_disk(
    tmp_path: Path, tiny_params: Params, moto_s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "cache"))  # S3 downloads stay in tmp
    pool = tmp_path / "corpus" / "pool"
    make_pool(pool, tiny_params)
    teachers = tmp_path / "teachers"
    make_teachers(teachers)

    client = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
    for bucket in ("src", "lake"):
        client.create_bucket(Bucket=bucket)
    upload_tree(client, pool, "src", "pool")

    s3_params = with_overrides(
        tiny_params,
        "datacomp_pool.source=s3://src/pool",
        "lake.root=s3://lake/run",
        f"lake.endpoint_url={moto_s3}",
    )
    local_params = with_overrides(tiny_params, "datacomp_pool.source=embedded", f"lake.root={tmp_path / 'local_lake'}")

    results = {}
    for label, params in (("s3", s3_params), ("local", local_params)):
        lake = open_lake(params.lake)
        # Every declared input must be published: the S3 run never reads embedded_corpus.
        publish_folder(lake, "embedded_corpus", tmp_path / "corpus" if label == "local" else None)
        ingest = run_stage("datacomp_pool", params, show_progress=False, report_dir=None, track=label == "s3")
        publish_folder(lake, "teacher_models", teachers)
        filtered = run_stage("filtered_pool", params, show_progress=False, report_dir=None, track=False)
        assert ingest.gate.passed and filtered.gate.passed
        reader = open_lake(params.lake)
        results[label] = {stage: reader.stage_dir(stage) for stage in ("datacomp_pool", "filtered_pool")}
        results[label]["ingest_summary"] = ingest.summary

    # The S3 run really wrote to the bucket: pointer and shards under a version prefix.
    pointer = json.loads(client.get_object(Bucket="lake", Key=f"run/filtered_pool/{LATEST_POINTER}")["Body"].read())
    assert "manifest.parquet" in pointer["files"] and any(f.startswith("shards/") for f in pointer["files"])
    assert results["s3"]["ingest_summary"]["source"] == "s3://src/pool"
    assert results["s3"]["ingest_summary"]["shards_read"] == results["local"]["ingest_summary"]["shards_read"] > 1

    s3_pool = pd.read_parquet(results["s3"]["datacomp_pool"] / "manifest.parquet")
    local_pool = pd.read_parquet(results["local"]["datacomp_pool"] / "manifest.parquet")
    assert len(s3_pool) > 0
    pd.testing.assert_frame_equal(s3_pool, local_pool)
    assert shard_digests(results["s3"]["datacomp_pool"]) == shard_digests(results["local"]["datacomp_pool"])

    s3_kept = pd.read_parquet(results["s3"]["filtered_pool"] / "manifest.parquet")
    local_kept = pd.read_parquet(results["local"]["filtered_pool"] / "manifest.parquet")
    assert 0 < len(s3_kept) < len(s3_pool)
    assert list(s3_kept["uid"]) == list(local_kept["uid"])
    for column in ("text", "width", "height", "original_width", "original_height", "shard"):
        assert list(s3_kept[column]) == list(local_kept[column]), column
    pd.testing.assert_series_equal(s3_kept["clip_score"], local_kept["clip_score"], check_exact=False, atol=1e-5)
    s3_dropped = pd.read_parquet(results["s3"]["filtered_pool"] / "dropped.parquet")
    local_dropped = pd.read_parquet(results["local"]["filtered_pool"] / "dropped.parquet")
    pd.testing.assert_frame_equal(s3_dropped[["uid", "rule"]], local_dropped[["uid", "rule"]])
