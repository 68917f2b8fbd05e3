"""ComfyUI's own Krea 2 text encoder (Qwen3-VL-4B) reading references jointly (DLAKrea2JointEncode), real ComfyUI.

The tiny Qwen3-VL-4B (tests/lib/dla_tiny/krea2.py: real width 2560 and 36 decoder layers, one head, a
16-wide MLP through ComfyUI's own ``qwen3vl_4b_model_config`` option, the full-size vision tower) goes
through ComfyUI's loader (``comfy.sd.load_clip``, type ``krea2``) and detection. Every reference value
comes from the same ComfyUI (``CLIPTextEncode``, its own ``layer=[...]`` stacking), never from stored
numbers.

ComfyUI 0.3.64 has no Krea 2: there every test asserts the pack's one-line "needs a newer ComfyUI" error.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from dla_harness import pack_module

from dla_tiny.cache import cached_build
from dla_tiny.krea2 import COMFY_KREA2_TE_OPTIONS, TE_DECODER_LAYERS, build_tiny_krea2_te, comfy_has_krea2

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPT = "the cat from the photo, sitting on a red sofa"
NEEDS_NEWER = (
    r"^Krea 2 needs a newer ComfyUI \(one with comfy/ldm/krea2 and CLIPLoader type krea2; tested: 0\.33\.0\); "
)
STATES = TE_DECODER_LAYERS + 1


def _image(side: int, seed: int) -> torch.Tensor:
    return torch.rand(1, side, side, 3, generator=torch.Generator().manual_seed(seed))  # ComfyUI IMAGE


@pytest.fixture(scope="module")
def pack(comfy):
    return pack_module("nodes.krea2_clip")


@pytest.fixture(scope="module")
def errors(comfy):
    return pack_module("dla_core.errors")


@pytest.fixture(scope="module")
def clip(comfy, tmp_path_factory):
    """ComfyUI's Krea 2 text encoder on the tiny file; None on a ComfyUI without Krea 2."""
    if not comfy_has_krea2():
        yield None
        return
    import comfy.model_management
    import comfy.sd

    path = cached_build(build_tiny_krea2_te, tmp_path_factory.mktemp("krea2-te"), seed=0)
    loaded = comfy.sd.load_clip(
        [str(path)], clip_type=comfy.sd.CLIPType.KREA2, model_options=copy.deepcopy(COMFY_KREA2_TE_OPTIONS)
    )
    yield loaded
    del loaded
    comfy.model_management.unload_all_models()


@pytest.fixture(scope="module")
def text_run(clip, pack):
    """(CLIPTextEncode's conditioning, the node's conditioning, features) for PROMPT, no image."""
    if clip is None:
        return None
    import nodes as comfy_nodes

    native = comfy_nodes.CLIPTextEncode().encode(clip, PROMPT)[0]
    conditioning, features = pack.DLAKrea2JointEncode.execute(clip, PROMPT).result
    return native, conditioning, features


@pytest.fixture(scope="module")
def joint_run(clip, pack):
    """(conditioning, features) for PROMPT with two references at MLLM sides 64 and 96 (4 and 9 image tokens)."""
    if clip is None:
        return None
    return pack.DLAKrea2JointEncode.execute(
        clip, PROMPT, mllm_resolutions="64, 96", image1=_image(80, 1), image2=_image(50, 2)
    ).result


def _refused_for_old_comfyui(pack, errors) -> bool:
    """On a ComfyUI without Krea 2: assert the node's one clear error and return True."""
    if comfy_has_krea2():
        return False
    with pytest.raises(errors.DLAInputError, match=NEEDS_NEWER):
        pack.DLAKrea2JointEncode.execute(object(), PROMPT)
    return True


def test_a_comfyui_without_krea2_gets_one_clear_version_line(pack, errors):
    import comfyui_version

    compat = pack_module("nodes.compat")
    message = compat.krea2_missing_message()  # the line the pack also logs at load
    assert re.match(NEEDS_NEWER, message) and f"this ComfyUI is {comfyui_version.__version__} " in message
    assert "\n" not in message and "has no Krea 2" in message
    assert compat.comfy_has_krea2() is comfy_has_krea2()
    if comfy_has_krea2():
        return
    with pytest.raises(errors.DLAInputError) as info:
        pack.DLAKrea2JointEncode.execute(object(), PROMPT)
    assert str(info.value) == message


def test_comfy_internals_the_krea2_capture_reads_are_where_expected(pack, errors, clip):
    """Pins everything ``comfy_krea2_modules`` reads from ComfyUI (the one place touching its internals)."""
    if _refused_for_old_comfyui(pack, errors):
        return
    import comfy.text_encoders.krea2 as comfy_krea2

    modules = pack.comfy_krea2_modules(clip)
    assert type(modules["model"]).__name__ == "Llama2_" and len(modules["layers"]) == TE_DECODER_LAYERS
    taps = list(pack_module("dla_core.krea2").TAP_LAYERS)
    assert modules["native_layers"] == list(comfy_krea2.KREA2_TAP_LAYERS) == taps
    assert modules["template"] == comfy_krea2.KREA2_TEMPLATE and "{}" in modules["template"]
    assert modules["visual"] is not None and modules["transformer"].model is modules["model"]
    for name in pack.VISION_PROBE_WEIGHTS:
        assert pack.holds_weights(modules["visual"].get_parameter(name)), name


def test_without_images_the_conditioning_equals_clip_text_encode_bit_for_bit(pack, errors, text_run):
    if _refused_for_old_comfyui(pack, errors):
        return
    native, conditioning, _ = text_run
    assert len(conditioning) == len(native) == 1
    assert conditioning[0][0].shape[-1] == 12 * 2560
    assert torch.equal(conditioning[0][0], native[0][0])
    assert conditioning[0][1].keys() == native[0][1].keys()


def test_features_hold_every_state_and_the_twelve_taps_stack_to_the_conditioning(pack, errors, text_run):
    if _refused_for_old_comfyui(pack, errors):
        return
    native, _, features = text_run
    krea2 = pack_module("dla_core.krea2")
    assert features.hidden_states.shape == (1, STATES, native[0][0].shape[1], 2560)
    assert (features.family, features.num_layers, features.width) == ("qwen3_vl", 37, 2560)
    assert features.text_mask.all() and not features.image_mask.any() and features.extra["target"] == "krea2"
    assert torch.equal(krea2.stack_taps(features.hidden_states), native[0][0])
    for layer in range(STATES - 1):  # genuinely different states, not copies of one buffer
        assert not torch.equal(features.hidden_states[:, layer], features.hidden_states[:, layer + 1]), layer


def test_image_tokens_sit_where_the_chat_template_puts_them(pack, errors, clip, joint_run):
    """Krea 2 keeps the user turn: <|vision_start|> [image 1] <|vision_end|> <|vision_start|> [image 2] ... text."""
    if _refused_for_old_comfyui(pack, errors):
        return
    conditioning, features = joint_run
    spans = features.extra["image_token_spans"]
    assert spans == [(1, 4), (7, 9)]  # 64 px: 2 x 2 merged patches of 32; 96 px: 3 x 3; one marker each side
    image = features.image_mask[0]
    assert int(image.sum()) == 13 and torch.equal(features.text_mask, ~features.image_mask)
    for start, size in spans:
        assert image[start : start + size].all()
    tokens = conditioning[0][0].shape[1]
    assert features.extra["image_token_share"] == pytest.approx(13 / tokens)
    krea2 = pack_module("dla_core.krea2")
    assert torch.equal(krea2.stack_taps(features.hidden_states), conditioning[0][0])
    text_only = pack.DLAKrea2JointEncode.execute(clip, PROMPT).result[0][0][0]
    assert tokens == text_only.shape[1] + 13 + 4  # image tokens + their vision markers


def test_every_captured_state_is_comfyuis_own_hidden_state_of_that_number_with_images(pack, errors, clip, joint_run):
    """ComfyUI's ``layer=[0, ..., 36]`` over the same joint tokens == the capture's states 0..36, image tokens included.

    The reference sets the encoder's ``layer`` list and calls ``encode_token_weights`` (``encode_from_tokens``
    would restore Krea 2's default list first); its output is flattened per token as for the 12 taps.
    """
    if _refused_for_old_comfyui(pack, errors):
        return
    _, features = joint_run
    modules = pack.comfy_krea2_modules(clip)
    images = [pack.resize_area(_image(80, 1), 64, 64), pack.resize_area(_image(50, 2), 96, 96)]
    tokens = clip.tokenize(PROMPT, images=images, llama_template=pack.joint_template(modules["template"], 2))
    te = getattr(clip.cond_stage_model, clip.cond_stage_model.clip)
    original = te.layer
    try:
        te.layer = list(range(STATES))
        native = clip.cond_stage_model.encode_token_weights(tokens)[0]  # [1, tokens, 37 * 2560]
    finally:
        te.layer = original
    per_state = native.reshape(1, native.shape[1], STATES, 2560).permute(0, 2, 1, 3)
    assert torch.equal(per_state, features.hidden_states)


def _identity_dla(features):
    init_dla = pack_module("dla_core.checkpoint").init_dla
    MLLMSpec = pack_module("dla_core.spec").MLLMSpec
    spec = MLLMSpec(family=features.family, num_layers=features.num_layers, width=features.width, name="tiny")
    return init_dla(spec, target="krea2", init="identity", lap_blocks=0)  # blocks would be exact identities anyway


@pytest.mark.parametrize("run", ["text", "joint"])
def test_identity_dla_through_the_dual_layer_aggregation_node_gives_native_krea2_conditioning(
    pack, errors, text_run, joint_run, run
):
    if _refused_for_old_comfyui(pack, errors):
        return
    native, features = (text_run[0], text_run[2]) if run == "text" else joint_run
    module = _identity_dla(features)
    types = pack_module("nodes.types")
    manage = pack_module("nodes.managed_models").manage
    handle = types.DLAHandle(patcher=manage(module, "default", "identity DLA"), module=module, file_name="identity")
    conditioning = pack_module("nodes.dla_nodes").DLAAggregate.execute(handle, features, 4.0).result[0]
    assert torch.equal(conditioning[0][0], native[0][0])
    assert "guidance" not in conditioning[0][1]  # Krea 2 is not guidance-distilled


def test_more_reference_images_than_the_limit_is_one_clear_error_before_the_encoder_runs(
    pack, errors, clip, monkeypatch
):
    if _refused_for_old_comfyui(pack, errors):
        return
    monkeypatch.setenv("DLA_MAX_REFERENCES", "1")
    ran = []
    modules = pack.comfy_krea2_modules(clip)
    handle = modules["layers"][0].register_forward_pre_hook(lambda *_: ran.append(1))
    try:
        with pytest.raises(errors.DLAInputError) as info:
            pack.DLAKrea2JointEncode.execute(clip, PROMPT, image1=torch.cat([_image(32, 1), _image(32, 2)]))
    finally:
        handle.remove()
    assert ran == [] and str(info.value).startswith("Reference images: 2, more than the limit of 1.")
    assert "DLA_MAX_REFERENCES=2" in str(info.value)


def test_cancel_stops_the_encoder_at_the_next_decoder_layer(pack, errors, clip):
    if _refused_for_old_comfyui(pack, errors):
        return
    import comfy.model_management as mm

    layers = pack.comfy_krea2_modules(clip)["layers"]
    ran = []

    def cancel_after_first(*_):
        ran.append(1)
        if len(ran) == 1:
            mm.interrupt_current_processing(True)

    handles = [layer.register_forward_hook(cancel_after_first) for layer in layers]
    try:
        with pytest.raises(mm.InterruptProcessingException):
            pack.DLAKrea2JointEncode.execute(clip, "cancelled while encoding")
    finally:
        for handle in handles:
            handle.remove()
        mm.interrupt_current_processing(False)
    assert ran == [1]  # the remaining decoder layers never ran
    for layer in layers:  # no hook of the pack left behind
        assert not layer._forward_pre_hooks and not layer._forward_hooks
    assert pack.DLAKrea2JointEncode.execute(clip, PROMPT).result[0][0][0].shape[-1] == 30720


def test_a_clip_that_is_not_krea2s_encoder_is_refused_with_the_loader_to_use(pack, errors, clip):
    if _refused_for_old_comfyui(pack, errors):
        return
    with pytest.raises(errors.DLAInputError, match=r"not a ComfyUI CLIP.*type 'krea2'"):
        pack.DLAKrea2JointEncode.execute("not a clip", PROMPT)
    other = clip.clone()
    other.cond_stage_model = torch.nn.Identity()  # any CLIP whose encoder is not Krea 2's
    with pytest.raises(errors.DLAInputError, match=r"not Krea 2's text encoder.*type 'krea2'"):
        pack.DLAKrea2JointEncode.execute(other, PROMPT)


@pytest.mark.parametrize("run", ["text", "joint"])
def test_init_dla_identity_through_dla_loader_and_dual_layer_aggregation_is_native_krea2(
    comfy, pack, errors, text_run, joint_run, run
):
    """`init-dla --target krea2 --init identity` (no MLLM folder: ComfyUI's Qwen3-VL-4B) -> DLA Loader -> DLA."""
    if _refused_for_old_comfyui(pack, errors):
        return
    cli = pack_module("dla_core.cli")
    dla_nodes = pack_module("nodes.dla_nodes")
    name = "krea2_identity.safetensors"
    path = comfy.base_dir / "extra_dla" / name  # extra_model_paths.yaml's dla folder
    if not path.exists():
        args = ["init-dla", "--target", "krea2", "--init", "identity", "--lap-blocks", "0", "--out", str(path)]
        assert cli.main(args) == 0
    native, features = (text_run[0], text_run[2]) if run == "text" else joint_run
    handle = dla_nodes.DLALoader.execute(name).result[0]
    conditioning = dla_nodes.DLAAggregate.execute(handle, features, 2.5).result[0]
    assert torch.equal(conditioning[0][0], native[0][0])


@pytest.fixture(scope="module")
def te_ready_dit(clip, tmp_path_factory):
    """A tiny Krea 2 DiT whose text fusion reads this encoder's 12 x 2560 (ComfyUI's loader and detection)."""
    if clip is None:
        return None
    import comfy.sd

    from dla_tiny.krea2 import TE_WIDTH, build_tiny_krea2_dit

    path = cached_build(build_tiny_krea2_dit, tmp_path_factory.mktemp("krea2-dit-2560"), seed=0, txtdim=TE_WIDTH)
    return comfy.sd.load_diffusion_model(str(path))


def test_a_joint_encoding_feeds_krea2s_layer_map_and_the_staged_sampler(pack, errors, joint_run, te_ready_dit):
    """The whole training-free pipeline on one Krea 2: joint encode -> layer map (text and image tokens) and
    -> staged sampling (stage 1 the joint conditioning, stage 2 + reference latents)."""
    if _refused_for_old_comfyui(pack, errors):
        return
    import node_helpers

    conditioning, features = joint_run
    _, summary = pack_module("nodes.krea2_layer_map").DLAKrea2LayerMap.execute(te_ready_dit, features, 256, 256).result
    text_tokens = int(features.text_mask.sum())
    assert f"text tokens ({text_tokens}):" in summary and "image tokens (13):" in summary
    references = [torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(7))]
    values = {"reference_latents": references, "reference_latents_method": "index"}
    with_references = node_helpers.conditioning_set_values(conditioning, values, append=True)
    sampled = (
        pack_module("nodes.staged_advanced")
        .DLAStagedKSamplerAdvanced.execute(
            te_ready_dit,
            conditioning,
            {"samples": torch.zeros(1, 16, 1, 4, 4)},
            seed=1,
            steps=2,
            cfg=1.0,
            sampler_name="euler",
            scheduler="simple",
            denoise=1.0,
            tau1=0.95,
            tau2=0.0,
            reference_timing="",
            positive_stage2=with_references,
        )
        .result[0]["samples"]
    )
    assert sampled.shape == (1, 16, 1, 4, 4) and torch.isfinite(sampled).all()
