"""The optimisation rules every trainer shares: the schedule, parameter groups, the logit-scale
cap.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from training.models.open_clip_models import fresh_model
from training.models.students import build_student
from training.optim import MAX_SCALE_MULTIPLIER, clamp_logit_scale_, cosine_lr, param_groups, scale_multiplier


def test_cosine_lr_warms_up_then_decays() -> None:
    lrs = [cosine_lr(s, 100, 10, 1e-3) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] < 1e-6 and cosine_lr(55, 100, 10, 1e-3) == pytest.approx(0.5e-3)
    assert cosine_lr(500, 100, 10, 1e-3, min_lr=1e-5) == pytest.approx(1e-5)
    with pytest.raises(ValueError):
        cosine_lr(0, 0, 0, 1e-3)


def test_no_weight_decay_on_biases_norms_scale_and_embeddings() -> None:
    model = build_student("tiny-vit")
    decay_group, no_decay_group = param_groups(model, 0.2)
    assert decay_group["weight_decay"] == 0.2 and no_decay_group["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in no_decay_group["params"]}
    decay = {names[id(p)] for p in decay_group["params"]}
    assert "clip.logit_scale" in no_decay
    assert "clip.token_embedding.weight" in no_decay and "clip.positional_embedding" in no_decay
    assert all(not n.endswith(".bias") for n in decay)
    assert all("ln" not in n.split(".")[-2] for n in decay if n.endswith("weight"))
    assert any("attn.in_proj_weight" in n for n in decay) and "clip.text_projection" in decay
    assert len(decay) + len(no_decay) == len(list(model.parameters()))


def test_the_bootstrap_trainers_use_the_same_rule() -> None:
    # One rule for every model the pipeline trains: an open_clip teacher's embeddings are not
    # decayed either, and its matrices are.
    teacher = fresh_model("cf-tiny-vit-teacher")
    decay_group, no_decay_group = param_groups(teacher, 0.1)
    names = {id(p): n for n, p in teacher.named_parameters()}
    no_decay = {names[id(p)] for p in no_decay_group["params"]}
    decay = {names[id(p)] for p in decay_group["params"]}
    assert {"token_embedding.weight", "positional_embedding", "logit_scale"} <= no_decay
    assert "visual.positional_embedding" in no_decay and "text_projection" in decay
    assert all(param.ndim >= 2 for name, param in teacher.named_parameters() if name in decay)


def test_the_logit_scale_cap_is_100_as_a_multiplier() -> None:
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(250.0)))
    assert float(scale_multiplier(logit_scale.detach())) == pytest.approx(MAX_SCALE_MULTIPLIER) == 100.0
    clamp_logit_scale_(logit_scale)
    assert float(logit_scale.detach()) == pytest.approx(math.log(100.0))
    logit_scale.data.fill_(-1.0)
    clamp_logit_scale_(logit_scale)
    assert float(logit_scale.detach()) == 0.0  # the multiplier never drops below 1
