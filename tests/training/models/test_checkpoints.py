"""MobileCLIP students to and from open_clip's and Apple's checkpoint layouts.

open_clip is the independent side: its ``create_model(name, pretrained=path)`` must load what
we write, and its own converter for Apple's checkpoints (timm's filters + its text renames)
must read our Apple layout. Weights are scrambled first: at init many tensors are equal
(BatchNorms are identities, layer scales all 1e-5), which would hide swapped names.
"""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.convert import convert_state_dict
from safetensors.torch import save_file

from export.reparameterize import reparameterize
from training.models.checkpoints import (
    CheckpointMismatchError,
    detect_layout,
    export_apple_checkpoint,
    export_open_clip_checkpoint,
    from_open_clip_state_dict,
    initial_student,
    load_pretrained_student,
    read_state_dict,
    to_apple_state_dict,
    to_open_clip_state_dict,
)
from training.models.mobileclip import build_mobileclip, list_variants
from training.models.mobileclip.apple_layout import from_apple, to_apple
from training.models.mobileclip.open_clip_layout import from_open_clip, to_open_clip
from training.models.students import StudentClip, build_student, save_student

EOT = 49407  # the CLIP tokenizer's end-of-text id, the highest in its vocabulary
OPEN_CLIP_VARIANTS = [name for name in list_variants() if open_clip.get_model_config(name) is not None]


@torch.no_grad()
def _scrambled(variant: str, seed: int = 0) -> StudentClip:
    """An eval-mode student whose every float tensor (BatchNorm statistics included) is distinct."""
    torch.manual_seed(seed)
    student = build_student(variant).eval()
    generator = torch.Generator().manual_seed(seed)
    for key, tensor in student.state_dict().items():
        if tensor.is_floating_point():
            tensor.mul_(1 + 0.1 * torch.randn(tensor.shape, generator=generator))
            tensor.add_(0.01 * torch.randn(tensor.shape, generator=generator))
            if key.endswith("running_var"):
                tensor.abs_()
    return student


def _inputs(size: int, length: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
    """Two [0, 1] images and two ``length``-token captions (EOT, then zero padding)."""
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(2, 3, size, size, generator=generator)
    tokens = torch.randint(1, EOT - 2, (2, length), generator=generator)
    for row, eot in enumerate((9, 20)):
        tokens[row, eot] = EOT
        tokens[row, eot + 1 :] = 0
    return pixels, tokens


@torch.no_grad()
def _embeddings(student: StudentClip, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    pixels, tokens = _inputs(size, student.info.context_length)
    return student.encode_image(pixels), student.encode_text(tokens)


def _assert_same_tensors(a: StudentClip, b: StudentClip) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key, tensor in state_a.items():
        assert torch.equal(tensor, state_b[key]), key


@pytest.fixture(scope="module")
def s1() -> StudentClip:
    return _scrambled("MobileCLIP-S1")


@torch.no_grad()
def test_open_clip_loads_our_s1_with_the_same_embeddings_and_round_trips_exactly(tmp_path, s1):
    path = export_open_clip_checkpoint(s1, tmp_path / "open_clip_s1.pt")
    reference = open_clip.create_model("MobileCLIP-S1", pretrained=str(path)).eval()  # strict load
    # MobileCLIP takes [0, 1] pixels (mean 0, std 1), so the same pixels go to both models;
    # MCi accepts any multiple of 32, and 64 px keeps the check cheap.
    pixels, tokens = _inputs(64)
    ours_image, ours_text = _embeddings(s1, 64)
    assert (reference.encode_image(pixels, normalize=True) - ours_image).abs().max() <= 1e-4
    assert (reference.encode_text(tokens, normalize=True) - ours_text).abs().max() <= 1e-4

    back = build_student("MobileCLIP-S1")
    back.load_state_dict(from_open_clip_state_dict("S1", reference.state_dict()))
    back.eval()
    _assert_same_tensors(back, s1)
    for got, want in zip(_embeddings(back, 64), (ours_image, ours_text), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("variant", OPEN_CLIP_VARIANTS)
def test_open_clip_layout_fits_open_clips_own_model_of_every_shared_variant(variant):
    # Weightless on both sides: keys and shapes only (strict loads raise on any difference).
    reference = open_clip.create_model(variant, device="meta")
    with torch.device("meta"):
        ours = build_mobileclip(variant)
    reference.load_state_dict(to_open_clip(ours.state_dict(), ours), strict=True)
    ours.load_state_dict(from_open_clip(reference.state_dict(), ours), strict=True)


@pytest.mark.parametrize("variant", ["MobileCLIP-nano", "MobileCLIP-S0"])
def test_apple_layout_round_trips_exactly(tmp_path, variant):
    student = _scrambled(variant)
    path = export_apple_checkpoint(student, tmp_path / "apple.pt")
    assert detect_layout(read_state_dict(path)) == "apple"
    back = load_pretrained_student(variant, path)
    _assert_same_tensors(back, student)
    size = student.info.image_size
    for got, want in zip(_embeddings(back, size), _embeddings(student, size), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("variant", list_variants())
def test_apple_layout_maps_every_variant_there_and_back(variant):
    # Keys and shapes (weightless); values are covered by the exact round trips above.
    with torch.device("meta"):
        model = build_mobileclip(variant)
    model.load_state_dict(from_apple(to_apple(model.state_dict(), model), model), strict=True)


def test_apple_layout_has_apples_key_names_for_s0():
    # Names and shapes from the state dict of Apple's mobileclip.clip.CLIP built from
    # mobileclip/configs/mobileclip_s0.json (ml-mobileclip): 893 tensors in all.
    with torch.device("meta"):
        model = build_mobileclip("MobileCLIP-S0")
    state = to_apple(model.state_dict(), model)
    assert len(state) == 893
    expected = {
        "image_encoder.model.patch_embed.0.rbr_conv.0.conv.weight": (64, 3, 3, 3),
        "image_encoder.model.patch_embed.2.rbr_skip.running_var": (64,),
        "image_encoder.model.network.0.1.token_mixer.mixer.rbr_scale.bn.weight": (64,),
        "image_encoder.model.network.0.1.token_mixer.norm.rbr_skip.running_mean": (64,),
        "image_encoder.model.network.0.1.token_mixer.layer_scale": (64, 1, 1),
        "image_encoder.model.network.2.5.convffn.conv.conv.weight": (128, 1, 7, 7),
        "image_encoder.model.network.3.proj.0.lkb_origin.conv.weight": (256, 1, 7, 7),
        "image_encoder.model.network.3.proj.0.se.fc1.weight": (64, 256, 1, 1),
        "image_encoder.model.network.5.proj.1.rbr_conv.0.bn.bias": (512,),
        "image_encoder.model.network.6.pe.weight": (512, 1, 7, 7),
        "image_encoder.model.network.7.1.token_mixer.qkv.weight": (1536, 512),
        "image_encoder.model.network.7.1.layer_scale_2": (512, 1, 1),
        "image_encoder.model.conv_exp.se.reduce.weight": (64, 1024, 1, 1),
        "image_encoder.model.conv_exp.rbr_scale.conv.weight": (1024, 1, 1, 1),
        "image_encoder.model.head.proj": (1024, 512),
        "text_encoder.embedding_layer.weight": (49408, 512),
        "text_encoder.positional_embedding.pos_embed.pos_embed": (1, 1, 77, 512),
        "text_encoder.transformer.0.token_mixer.mixer.rbr_conv.0.conv.weight": (512, 1, 1, 11),
        "text_encoder.transformer.0.token_mixer.mixer.rbr_skip.running_var": (512,),
        "text_encoder.transformer.5.token_mixer.norm.rbr_skip.weight": (512,),
        "text_encoder.transformer.5.convffn.conv.bn.bias": (512,),
        "text_encoder.transformer.0.layer_scale": (512, 1, 1),
        "text_encoder.transformer.2.pre_norm_mha.1.qkv_proj.weight": (1536, 512),
        "text_encoder.transformer.4.pre_norm_ffn.4.weight": (512, 2048),
        "text_encoder.final_layer_norm.bias": (512,),
        "text_encoder.projection_layer": (512, 512),
        "logit_scale": (),
    }
    assert {key: tuple(state[key].shape) for key in expected if key in state} == expected


@torch.no_grad()
def test_open_clips_converter_reads_our_apple_layout_of_s1(tmp_path, s1):
    path = export_apple_checkpoint(s1, tmp_path / "mobileclip_s1.pt")
    reference = open_clip.create_model("MobileCLIP-S1", pretrained=str(path)).eval()
    pixels, tokens = _inputs(64)
    ours_image, ours_text = _embeddings(s1, 64)
    assert (reference.encode_image(pixels, normalize=True) - ours_image).abs().max() <= 1e-4
    assert (reference.encode_text(tokens, normalize=True) - ours_text).abs().max() <= 1e-4


def test_open_clips_converter_reads_our_apple_layout_of_b():
    # ViT-B: keys and shapes through open_clip's converter (timm's hybrid-ViT filter), and back.
    reference = open_clip.create_model("MobileCLIP-B", device="meta")
    with torch.device("meta"):
        ours = build_mobileclip("MobileCLIP-B")
    apple = to_apple(ours.state_dict(), ours)
    # assign=True: the converter adds real zero biases, which a plain load would copy onto meta.
    reference.load_state_dict(convert_state_dict(reference, apple), strict=True, assign=True)
    ours.load_state_dict(from_apple(apple, ours), strict=True)


def test_layout_detection_unwraps_wrappers_prefixes_and_folders(tmp_path):
    student = _scrambled("MobileCLIP-nano")
    wrapped = {"model": {f"module.{key}": value for key, value in student.state_dict().items()}, "step": 3}
    torch.save(wrapped, tmp_path / "train.pt")
    _assert_same_tensors(load_pretrained_student("nano", tmp_path / "train.pt"), student)

    save_file(to_apple_state_dict(student), tmp_path / "apple.safetensors")
    _assert_same_tensors(load_pretrained_student("nano", tmp_path / "apple.safetensors"), student)

    save_student(student, tmp_path / "folder")
    _assert_same_tensors(load_pretrained_student("MobileCLIP-nano", tmp_path / "folder"), student)
    with pytest.raises(CheckpointMismatchError, match="holds a MobileCLIP-nano student, not MobileCLIP-S0"):
        load_pretrained_student("S0", tmp_path / "folder")


def test_broken_or_foreign_checkpoints_fail_with_the_keys_named(tmp_path):
    nano = _scrambled("MobileCLIP-nano")
    apple = to_apple_state_dict(nano)

    def attempt(state: dict[str, torch.Tensor], variant: str = "nano") -> None:
        torch.save(state, tmp_path / "broken.pt")
        load_pretrained_student(variant, tmp_path / "broken.pt")

    missing = {key: value for key, value in apple.items() if key != "text_encoder.final_layer_norm.weight"}
    with pytest.raises(CheckpointMismatchError, match=r"1 missing keys: clip\.text\.ln_final\.weight"):
        attempt(missing)
    with pytest.raises(CheckpointMismatchError, match=r"1 unexpected keys: text_encoder\.extra"):
        attempt({**apple, "text_encoder.extra": torch.zeros(3)})
    with pytest.raises(CheckpointMismatchError, match=r"wrong shapes: clip\.text\.text_projection\.weight"):
        attempt({**apple, "text_encoder.projection_layer": torch.zeros(128, 64)})
    with pytest.raises(CheckpointMismatchError, match="does not fit MobileCLIP-S0 \\(a checkpoint of another variant"):
        attempt(apple, "S0")
    with pytest.raises(ValueError, match="unrecognised checkpoint layout"):
        attempt({"weights": torch.zeros(3)})
    folded, _ = reparameterize(nano)
    with pytest.raises(CheckpointMismatchError, match="folded weights: load the reparameterized student's folder"):
        attempt(folded.state_dict())


def test_what_the_layouts_cannot_hold_is_refused(s1):
    with pytest.raises(ValueError, match="no model config named 'MobileCLIP-S0'"):
        to_open_clip_state_dict(build_student("MobileCLIP-S0"))
    folded, _ = reparameterize(_scrambled("MobileCLIP-nano"))
    with pytest.raises(ValueError, match="the student is folded"):
        to_apple_state_dict(folded)
    state = to_open_clip_state_dict(s1)
    state["visual.trunk.head.fc.bias"] = torch.full((512,), 0.5)
    with pytest.raises(ValueError, match=r"head\.fc\.bias is non-zero"):
        from_open_clip_state_dict("S1", state)


def test_student_model_config_can_start_from_a_pretrained_checkpoint(tmp_path, tiny_params):
    student = _scrambled("MobileCLIP-nano")
    path = export_apple_checkpoint(student, tmp_path / "mobileclip_nano.pt")
    cfg = tiny_params.student_model.model_copy(update={"model": "MobileCLIP-nano", "init_checkpoint": str(path)})
    _assert_same_tensors(initial_student(cfg), student)
    fresh = initial_student(cfg.model_copy(update={"init_checkpoint": None}))
    assert not torch.equal(fresh.clip.text.text_projection.weight, student.clip.text.text_projection.weight)


def test_student_model_refuses_to_start_from_a_folded_student(tmp_path, tiny_params):
    folded, _ = reparameterize(build_student("MobileCLIP-nano").eval())
    save_student(folded, tmp_path / "folded", reparameterized=True)
    cfg = tiny_params.student_model.model_copy(
        update={"model": "MobileCLIP-nano", "init_checkpoint": str(tmp_path / "folded")}
    )
    with pytest.raises(ValueError, match="reparameterized"):
        initial_student(cfg)
