"""Image-trunk pretraining on KEY.json scene facts, and the LiT teacher built on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import default_params, with_changes
from tests.training.corpus_helpers import write_corpus
from training.data.embedded_layout import TEACHER_SHARDS_DIR
from training.data.teacher_corpus import read_corpus
from training.trainers.attribute_pretraining import MISSING, fact_targets, facts_loss, pretrain_trunk, scene_value
from training.trainers.clip_teacher import train_lit


def test_scene_value_reads_dotted_keys_as_text() -> None:
    attrs = {
        "main": {"shape": "star", "color": "red", "count": 2, "position": None},
        "extra": None,
        "texture": "striped",
    }
    assert scene_value(attrs, "main.shape") == "star"
    assert scene_value(attrs, "main.count") == "2"  # one class per value, whatever its JSON type
    assert scene_value(attrs, "texture") == "striped"
    for absent in ("main.position", "extra.shape", "background", "main"):  # None, missing, or a group
        assert scene_value(attrs, absent) is None


def test_fact_classes_come_from_training_samples_only() -> None:
    attrs = [{"texture": "plain"}, {"texture": "dotted"}, None, {"texture": "striped"}, {"shape": "x"}]
    targets = fact_targets(attrs, torch.tensor([0, 1, 2, 4]), {"texture": 1.0})
    assert targets.classes == [["dotted", "plain"]]  # sample 3 is held out
    # The held-out sample's unseen value and the samples without the key carry no label.
    assert targets.labels[:, 0].tolist() == [1, 0, MISSING, MISSING, MISSING]
    assert targets.has_facts.tolist() == [True, True, False, False, False]


def test_facts_loss_is_a_softmax_per_key_over_labelled_samples() -> None:
    targets = fact_targets(
        [{"a": "x", "b": "p"}, {"a": "y", "b": "q"}, {"a": "z"}], torch.arange(3), {"a": 1.0, "b": 0.5}
    )
    assert [s.start for s in targets.slices()] == [0, 3] and targets.labels[2, 1] == MISSING
    logits = torch.randn(3, 5)
    loss, _ = facts_loss(logits, targets.labels, targets)
    expected = F.cross_entropy(logits[:, :3], targets.labels[:, 0]) + 0.5 * F.cross_entropy(
        logits[:2, 3:], targets.labels[:2, 1]
    )
    assert torch.allclose(loss, expected)
    perfect = torch.zeros(3, 5)
    perfect[torch.arange(3), targets.labels[:, 0]] = 9.0
    perfect[torch.arange(2), 3 + targets.labels[:2, 1]] = 9.0
    assert facts_loss(perfect, targets.labels, targets)[1] == 1.0
    assert facts_loss(-perfect, targets.labels, targets)[1] == 0.0


def _corpus(tmp_path: Path, n: int = 32):
    return read_corpus(write_corpus(tmp_path / "c", n=n) / TEACHER_SHARDS_DIR, 96)


def test_pretraining_learns_the_facts(tmp_path: Path) -> None:
    from training.models.open_clip_models import fresh_model
    from training.trainers.corpus_loop import pixel_norm

    corpus = _corpus(tmp_path)
    cfg = with_changes(default_params().teacher_models.image_pretraining, steps=40, batch_size=16, warmup_steps=2)
    torch.manual_seed(0)
    model = fresh_model("cf-tiny-cnn-teacher")
    mean, std = pixel_norm(model)
    hist = pretrain_trunk(
        model.visual.trunk, corpus, torch.arange(len(corpus)), cfg, image_size=64, mean=mean, std=std, seed=0, label="t"
    )
    assert list(hist.columns) == ["step", "lr", "loss", "facts_accuracy"] and len(hist) == 40
    assert hist["loss"].tail(5).mean() < 0.5 * hist["loss"].head(3).mean()
    assert not model.visual.trunk.training  # left in eval mode, ready to be locked


def test_pretraining_without_attributes_is_a_clear_error(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, n=8)
    corpus.attributes = [None] * len(corpus)
    cfg = with_changes(default_params().teacher_models.image_pretraining, steps=2, batch_size=4)
    boot = with_changes(default_params().teacher_models.bootstrap, steps=1, batch_size=4)
    with pytest.raises(ValueError, match=r"needs KEY\.json scene attributes.*image_pretraining\.steps: 0"):
        train_lit("cf-tiny-cnn-teacher", corpus, torch.arange(8), boot, cfg, label="t")


def test_lit_locks_the_trunk_and_tunes_text_and_projection(tmp_path: Path) -> None:
    from training.trainers.clip_teacher import seeded_model

    corpus = _corpus(tmp_path)
    pre = with_changes(default_params().teacher_models.image_pretraining, steps=6, batch_size=8, warmup_steps=1)
    boot = with_changes(default_params().teacher_models.bootstrap, steps=20, batch_size=16, warmup_steps=2)
    result = train_lit("cf-tiny-cnn-teacher", corpus, torch.arange(len(corpus)), boot, pre, label="lit")
    assert result.pretrain_history is not None and len(result.pretrain_history) == 6 and len(result.history) == 20
    assert result.history["loss"].tail(3).mean() < result.history["loss"].head(3).mean()
    # Re-run the pretraining alone from the same seed: the LiT phase left the trunk as it was.
    again = seeded_model("cf-tiny-cnn-teacher", boot.seed)
    from training.trainers.corpus_loop import pixel_norm

    mean, std = pixel_norm(again)
    pretrain_trunk(
        again.visual.trunk, corpus, torch.arange(len(corpus)), pre, image_size=64, mean=mean, std=std, seed=0, label="x"
    )
    for (name, locked), (_, ref) in zip(
        result.model.visual.trunk.state_dict().items(), again.visual.trunk.state_dict().items(), strict=True
    ):
        assert torch.equal(locked, ref), name
    # ... while the projection and the text tower moved from their initialisation.
    init = seeded_model("cf-tiny-cnn-teacher", boot.seed)
    assert not torch.equal(result.model.visual.head.proj.weight, init.visual.head.proj.weight)
    assert not torch.equal(result.model.text_projection, init.text_projection)


def test_pretraining_on_facts_the_corpus_lacks_is_a_clear_error(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, n=8)
    pre = with_changes(
        default_params().teacher_models.image_pretraining, steps=1, batch_size=4, facts={"main.shape": 1.0, "size": 1.0}
    )
    boot = with_changes(default_params().teacher_models.bootstrap, steps=1, batch_size=4)
    with pytest.raises(ValueError, match=r"\['size'\] name no KEY\.json value"):
        train_lit("cf-tiny-cnn-teacher", corpus, torch.arange(8), boot, pre, label="t")


def test_lit_needs_a_timm_image_tower(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, n=8)
    pre = with_changes(default_params().teacher_models.image_pretraining, steps=1, batch_size=4)
    boot = with_changes(default_params().teacher_models.bootstrap, steps=1, batch_size=4)
    with pytest.raises(TypeError, match="timm image tower"):
        train_lit("cf-tiny-vit-teacher", corpus, torch.arange(8), boot, pre, label="vit")


def test_teachers_trained_in_parallel_threads_equal_those_trained_alone(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    corpus = _corpus(tmp_path)
    pre = with_changes(default_params().teacher_models.image_pretraining, steps=4, batch_size=8, warmup_steps=1)
    boots = [with_changes(default_params().teacher_models.bootstrap, steps=4, batch_size=8, seed=s) for s in (0, 1)]

    def train(boot):  # type: ignore[no-untyped-def]
        return train_lit("cf-tiny-cnn-teacher", corpus, torch.arange(len(corpus)), boot, pre, label="t").model

    alone = [train(b) for b in boots]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(train, boots))
    for a, b in zip(alone, together, strict=True):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.equal(x, y), name
    # The two seeds give two different teachers.
    assert not torch.equal(alone[0].text_projection, alone[1].text_projection)
