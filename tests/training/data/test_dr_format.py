"""DataCompDR sample/shard format: round trips, reader variants, rejection of bad samples."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import aug_settings
from training.data.augment import sample_aug_params
from training.data.dr_format import (
    DRMeta,
    DRSample,
    DRSampleError,
    DRShardWriter,
    decode_sample,
    encode_sample,
    read_shard,
    write_shard,
)
from training.data.tar_shards import DamagedTarError

A, S, D = 3, 2, 12


def _params(seed: int, count: int = A) -> list:
    rng = np.random.default_rng(seed)
    return [sample_aug_params(rng, 40, 30, **aug_settings()) for _ in range(count)]


def _sample(seed: int = 0, **overrides: object) -> DRSample:
    rng = np.random.default_rng(seed)
    fields = dict(
        uid=f"{seed:032x}",
        param_aug=_params(seed),
        image_emb=rng.standard_normal((A, D)).astype(np.float32),
        text_emb=rng.standard_normal((1 + S, D)).astype(np.float32),
        syn_text=[f"synthetic caption {k} of {seed}" for k in range(S)],
        sha256="ab" * 32,
        url=f"http://example.com/{seed}.jpg",
        jpg=b"\xff\xd8 not really a jpeg",
        txt=f"real caption {seed} é",
    )
    fields.update(overrides)
    return DRSample.from_combined(**fields)


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _members(**overrides: object) -> dict[str, bytes]:
    """Hand-built members of a valid combined-layout sample, with fields replaced."""
    rng = np.random.default_rng(9)
    parts: dict[str, object] = {
        "json": {"uid": "u1", "sha256": "00"},
        "syn.json": {"syn_text": ["a", "b"]},
        "paug.json": {"param_aug": _params(1, 2)},
        "npz": {
            "image_emb": rng.standard_normal((2, D)).astype(np.float32),
            "text_emb": rng.standard_normal((3, D)).astype(np.float32),
        },
    }
    parts.update(overrides)
    out: dict[str, bytes] = {}
    for ext, value in parts.items():
        if value is None:
            continue
        if isinstance(value, bytes):
            out[ext] = value
        elif ext == "npz":
            out[ext] = _npz(**value)
        else:
            out[ext] = json.dumps(value).encode()
    return out


def test_npz_round_trip_is_exact() -> None:
    sample = _sample(1)
    decoded = decode_sample("k", encode_sample(sample, embedding_format="npz"))
    assert decoded.uid == sample.uid and decoded.sha256 == sample.sha256 and decoded.url == sample.url
    assert decoded.param_aug == sample.param_aug
    assert decoded.captions == sample.captions
    assert decoded.jpg == sample.jpg and decoded.txt == sample.txt
    assert decoded.image_emb.dtype == np.float32
    assert np.array_equal(decoded.image_emb, sample.image_emb)
    assert np.array_equal(decoded.text_emb, sample.text_emb)
    assert decoded.text_emb.shape == (1 + S, D) and decoded.num_real == 1


def test_pth_gz_round_trip_is_bfloat16() -> None:
    sample = _sample(2)
    members = encode_sample(sample, embedding_format="pth.gz")
    assert "npz" not in members
    stored = torch.load(io.BytesIO(gzip.decompress(members["pth.gz"])), weights_only=True)
    assert stored["image_emb"].dtype == torch.bfloat16
    decoded = decode_sample("k", members)
    for got, want in ((decoded.image_emb, sample.image_emb), (decoded.text_emb, sample.text_emb)):
        assert got.dtype == np.float32
        assert np.array_equal(got, torch.from_numpy(want).bfloat16().float().numpy())
        np.testing.assert_allclose(got, want, rtol=2**-8, atol=1e-6)
        assert not np.array_equal(got, want)  # really was rounded


def test_shard_round_trip_and_webdataset_compatibility(tmp_path: Path) -> None:
    samples = [_sample(k) for k in range(3)]
    path = tmp_path / "00000.tar"
    assert write_shard(path, samples, embedding_format="npz") == 3
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert names[:7] == [
        f"000000000.{ext}" for ext in ("url.txt", "syn.json", "paug.json", "npz", "json", "jpg", "txt")
    ]
    decoded = list(read_shard(path, expected_dim=D))
    assert [s.uid for s in decoded] == [s.uid for s in samples]
    assert all(np.array_equal(a.image_emb, b.image_emb) for a, b in zip(decoded, samples, strict=True))

    import webdataset as wds

    records = list(wds.WebDataset(str(path), shardshuffle=False))
    assert len(records) == 3
    assert json.loads(records[1]["paug.json"])["param_aug"] == samples[1].param_aug
    assert json.loads(records[1]["json"])["uid"] == samples[1].uid


def test_shards_are_byte_reproducible(tmp_path: Path) -> None:
    for fmt in ("npz", "pth.gz"):
        write_shard(tmp_path / f"a.{fmt}.tar", [_sample(4)], embedding_format=fmt)
        write_shard(tmp_path / f"b.{fmt}.tar", [_sample(4)], embedding_format=fmt)
        assert (tmp_path / f"a.{fmt}.tar").read_bytes() == (tmp_path / f"b.{fmt}.tar").read_bytes()


def test_reader_accepts_param_aug_as_json_string() -> None:
    sample = _sample(3)
    members = encode_sample(sample, embedding_format="npz", param_aug_as_string=True)
    assert isinstance(json.loads(members["paug.json"])["param_aug"], str)
    assert decode_sample("k", members).param_aug == sample.param_aug


def test_reader_accepts_per_key_arrays_and_several_syn_keys() -> None:
    rng = np.random.default_rng(0)
    text = rng.standard_normal((1, D)).astype(np.float32)
    syn_a = rng.standard_normal((2, D)).astype(np.float32)
    syn_b = rng.standard_normal((3, D)).astype(np.float32)
    members = _members(
        **{
            "syn.json": {"syn_text": ["a0", "a1"], "syn_text_v2": ["b0", "b1", "b2"], "note": "not a caption key"},
            "npz": {
                "image_emb": rng.standard_normal((2, D)).astype(np.float32),
                "text_emb": text,
                "syn_text_emb": syn_a,
                "syn_text_v2_emb": syn_b,
            },
        }
    )
    sample = decode_sample("k", members, expected_dim=D)
    assert list(sample.syn_text) == ["syn_text", "syn_text_v2"]
    assert sample.captions == ["a0", "a1", "b0", "b1", "b2"]
    assert np.array_equal(sample.text_emb, np.concatenate([text, syn_a, syn_b]))
    # The writer's per-key layout reads back the same.
    again = decode_sample("k", encode_sample(sample, embedding_format="npz", layout="per_key"))
    assert np.array_equal(again.text_emb, sample.text_emb) and again.captions == sample.captions
    with pytest.raises(DRSampleError) as err:  # one key's array missing
        decode_sample(
            "k",
            _members(
                **{
                    "syn.json": {"syn_text": ["a0", "a1"], "syn_text_v2": ["b0"]},
                    "npz": {"image_emb": np.zeros((2, D), np.float32), "text_emb": text, "syn_text_emb": syn_a},
                }
            ),
        )
    assert err.value.reason == "missing_embeddings"


def test_reader_accepts_several_syn_keys_in_the_combined_layout() -> None:
    rng = np.random.default_rng(1)
    text = rng.standard_normal((1 + 3, D)).astype(np.float32)
    members = _members(
        **{
            "syn.json": {"syn_text": ["a0", "a1"], "syn_text_v2": ["b0"]},
            "npz": {"image_emb": rng.standard_normal((2, D)).astype(np.float32), "text_emb": text},
        }
    )
    sample = decode_sample("k", members)
    assert sample.captions == ["a0", "a1", "b0"]
    assert np.array_equal(sample.syn_emb["syn_text_v2"], text[3:])
    assert np.array_equal(sample.real_emb, text[:1])


def test_reader_accepts_pth_gz_without_images() -> None:
    sample = _sample(5, jpg=None, txt=None)
    members = encode_sample(sample, embedding_format="pth.gz", layout="per_key")
    assert "jpg" not in members and "txt" not in members
    decoded = decode_sample("k", members)
    assert decoded.jpg is None and decoded.txt is None and decoded.num_syn == S


def _nan(shape: tuple[int, int]) -> np.ndarray:
    array = np.zeros(shape, np.float32)
    array[0, 1] = np.nan
    return array


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"npz": {"image_emb": _nan((2, D)), "text_emb": np.zeros((3, D), np.float32)}}, "nonfinite_embedding"),
        (
            {"npz": {"image_emb": np.zeros((2, D), np.float32), "text_emb": np.full((3, D), np.inf, np.float32)}},
            "nonfinite_embedding",
        ),
        (
            {"npz": {"image_emb": np.zeros((3, D), np.float32), "text_emb": np.zeros((3, D), np.float32)}},
            "bad_shape",
        ),  # 3 rows, 2 augs
        (
            {"npz": {"image_emb": np.zeros((2, D), np.float32), "text_emb": np.zeros((3, D + 1), np.float32)}},
            "bad_shape",
        ),
        (
            {"npz": {"image_emb": np.zeros((2, D), np.float32), "text_emb": np.zeros((2, D), np.float32)}},
            "bad_shape",
        ),  # no real row
        ({"npz": {"image_emb": np.zeros(D, np.float32), "text_emb": np.zeros((3, D), np.float32)}}, "bad_shape"),
        ({"npz": {"image_emb": np.zeros((2, D), np.float32)}}, "missing_embeddings"),
        ({"npz": None}, "missing_embeddings"),
        ({"npz": b"PK garbage"}, "bad_embeddings"),
        ({"pth.gz": b"not gzip", "npz": None}, "bad_embeddings"),
        ({"paug.json": {"param_aug": [[[0, 0, 5, 5], [[99, 0.0]]], [[0, 0, 5, 5], []]]}}, "bad_param_aug"),
        ({"paug.json": {"param_aug": "[[not json"}}, "bad_param_aug"),
        ({"paug.json": {"param_aug": []}}, "bad_param_aug"),
        ({"syn.json": {"syn_text": []}}, "no_synthetic_captions"),
        ({"syn.json": {"syn_text": ["a", 3]}}, "bad_syn_json"),
        ({"syn.json": b"{broken"}, "bad_syn_json"),
        ({"json": {"sha256": "00"}}, "missing_uid"),
        ({"json": None}, "missing_member"),
    ],
)
def test_bad_samples_are_rejected_with_a_reason(overrides: dict, reason: str) -> None:
    with pytest.raises(DRSampleError) as err:
        decode_sample("k", _members(**overrides))
    assert err.value.reason == reason


def test_expected_dim_is_enforced_and_writer_refuses_bad_samples(tmp_path: Path) -> None:
    assert decode_sample("k", _members(), expected_dim=D).emb_dim == D
    with pytest.raises(DRSampleError) as err:
        decode_sample("k", _members(), expected_dim=D + 4)
    assert err.value.reason == "bad_shape"
    bad = _sample(6)
    bad.image_emb[1, 2] = np.nan
    with pytest.raises(DRSampleError), DRShardWriter(tmp_path / "x.tar", embedding_format="npz") as writer:
        writer.write(bad)


def test_damaged_shard_raises_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "t.tar"
    write_shard(path, [_sample(k) for k in range(2)], embedding_format="npz")
    (tmp_path / "broken.tar").write_bytes(path.read_bytes()[:700])
    with pytest.raises(DamagedTarError, match=r"broken\.tar: tar cannot be read whole"):
        list(read_shard(tmp_path / "broken.tar"))


def test_dr_meta_round_trip_and_validation(tmp_path: Path) -> None:
    meta = DRMeta(
        teachers=("vit", "rn"),
        teacher_dims=(8, 4),
        logit_scales=(100.0, 70.0),
        num_augmentations=3,
        num_captions=2,
        image_sizes=(64, 32),
        embedding_format="pth.gz",
    )
    path = meta.write(tmp_path)
    assert path.name == "dr_meta.json"
    assert json.loads(path.read_text())["emb_dim"] == 12
    assert DRMeta.read(tmp_path) == meta
    assert meta.teacher_slices() == [slice(0, 8), slice(8, 12)]
    with pytest.raises(ValueError):
        DRMeta(("a", "b"), (8,), (100.0, 100.0), 1, 1, (64, 64))
    with pytest.raises(ValueError):
        DRMeta(("a",), (8,), (0.0,), 1, 1, (64,))
    with pytest.raises(ValueError, match="emb_dim"):
        DRMeta.from_dict({**meta.to_dict(), "emb_dim": 13})
    with pytest.raises(ValueError):
        DRMeta.from_dict({"teachers": ["a"]})
    with pytest.raises(FileNotFoundError):
        DRMeta.read(tmp_path / "missing")
