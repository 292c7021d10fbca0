"""Shared fixtures: a real S3 endpoint (moto's standalone server) and tiny-profile params."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clipforge.config import Params, deep_merge
from clipforge.params_file import load_params

# The repository root: tests find params.yaml, profiles/ and dvc.yaml from here.
REPO = Path(__file__).resolve().parents[1]

# Dummy credentials for moto; tests that check error messages look for these strings.
DUMMY_ACCESS_KEY = "clipforge-test-access-key"
DUMMY_SECRET_KEY = "clipforge-test-secret-key"


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_answers(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"moto server at {url} did not answer within {timeout:.0f} s")


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """Endpoint URL of a moto S3 server running as a subprocess for the whole session."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    try:
        _wait_until_answers(endpoint, proc)
        os.environ["AWS_ACCESS_KEY_ID"] = DUMMY_ACCESS_KEY
        os.environ["AWS_SECRET_ACCESS_KEY"] = DUMMY_SECRET_KEY
        os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def tiny_params_for(tmp_path: Path, overrides: list[str] | None = None) -> Params:
    """profiles/tiny.yaml with the lake and MLflow stores under ``tmp_path``."""
    return load_params(
        REPO / "profiles" / "tiny.yaml",
        [
            f"lake.root={tmp_path / 'lake'}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"mlflow.artifact_location={tmp_path / 'mlartifacts'}",
            *(overrides or []),
        ],
    )


@pytest.fixture
def tiny_params(tmp_path: Path) -> Params:
    return tiny_params_for(tmp_path)


def stage_gate(stage: str, manifest: Any, params: Params) -> Any:
    """The gate the runner applies to ``stage``: its module's declared suite over ``manifest``."""
    from chain.spec import STAGES
    from clipforge.gates import run_gate

    return run_gate(stage, STAGES[stage].quality_suite(params), manifest)


@functools.cache
def default_params() -> Params:
    """params.yaml itself: where every default lives (the config models have none)."""
    return load_params(REPO / "params.yaml")


def with_changes(config: Any, **changes: Any) -> Any:
    """A copy of a config model with ``changes`` applied and validated (nested dicts merge)."""
    return type(config).model_validate(deep_merge(config.model_dump(), changes))


def section(name: str, **changes: Any) -> Any:
    """params.yaml's section ``name``, with ``changes``: what a test means by "the defaults, but ..."."""
    return with_changes(getattr(default_params(), name), **changes)


def params_with(**sections: dict[str, Any]) -> Params:
    """params.yaml with some keys of some sections changed, validated."""
    data = default_params().model_dump(mode="json")
    for name, values in sections.items():
        data[name] = {**data[name], **values}
    return Params.model_validate(data)


# Apple's DataCompDR generator settings (docs/method.md §2.4) as ``sample_aug_params`` keywords.
# The format and replay tests use them rather than params.yaml's, which turns RandAugment off for
# the embedded scenes: every op must still record, replay and validate.
APPLE_AUG_SETTINGS: dict[str, Any] = {"scale": (0.08, 1.0), "num_ops": 2, "magnitude": 9, "num_bins": 31}


def aug_settings(**changes: Any) -> dict[str, Any]:
    """Apple's augmentation settings (scale, ops, magnitude, bins), some changed."""
    return {**APPLE_AUG_SETTINGS, **changes}


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two randomly initialised tiny ViT teachers (different seeds) as a teacher_models folder."""
    import open_clip
    import torch

    from training.models.open_clip_models import save_ensemble_index, save_model

    folder = tmp_path_factory.mktemp("teacher_models")
    for seed in (0, 1):
        torch.manual_seed(seed)
        name = f"teacher{seed}"
        save_model(
            folder / name,
            name=name,
            model_name="cf-tiny-vit-teacher",
            model=open_clip.create_model("cf-tiny-vit-teacher"),
            logit_scale=100.0,
        )
    save_ensemble_index(folder, ["teacher0", "teacher1"])
    # Every published stage folder has one (an online-teacher run's resume key hashes it).
    import pandas as pd

    pd.DataFrame({"teacher": ["teacher0", "teacher1"]}).to_parquet(folder / "manifest.parquet", index=False)
    return folder
