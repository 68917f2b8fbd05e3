"""ComfyUI's own FLUX.2 text encoders as the DLA's MLLM (DLAFlux2TextEncode), in a real ComfyUI on tiny weights.

Both encoders go through ComfyUI's real loader (``comfy.sd.load_clip``, type ``flux2``) and
detection: FLUX.2 [dev]'s Mistral-Small-3 (the pruned 30-layer file) and [klein] 4B's Qwen3-4B,
built by tests/lib/dla_tiny/flux2_text_encoders.py at their real hidden widths and narrow
everywhere else. Every reference value comes from the same ComfyUI (``CLIPTextEncode``, its
own ``layer=[...]`` stacking), never from numbers stored from another version.

A ComfyUI without FLUX.2 (the oldest row, 0.3.64) cannot load these files; there every test
asserts the pack's one-line "needs ComfyUI >= ..." error instead.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from dla_harness import pack_module
from tiny_flux2 import comfy_has_flux2_text_encoders

from dla_tiny.cache import cached_build
from dla_tiny.flux2_text_encoders import (
    COMFY_MISTRAL3_OPTIONS,
    COMFY_QWEN3_OPTIONS,
    MISTRAL3_PRUNED_LAYERS,
    QWEN3_LAYERS,
    build_tiny_mistral3_te,
    build_tiny_qwen3_4b_te,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPT = "a red fox sitting on a mossy rock, morning light"
NEEDS_NEWER = (
    r"^FLUX\.2 needs ComfyUI >= 0\.3\.72 \(FLUX\.2 \[klein\]: >= 0\.9\.2\); "
    r"this ComfyUI \([0-9][^ ]*\) has no FLUX\.2\. Update ComfyUI"
)
# encoder -> (file builder, model options, family, decoder layers, native layers, target)
ENCODERS = {
    "mistral3": (build_tiny_mistral3_te, COMFY_MISTRAL3_OPTIONS, MISTRAL3_PRUNED_LAYERS, (10, 20, 30), "flux2"),
    "qwen3": (build_tiny_qwen3_4b_te, COMFY_QWEN3_OPTIONS, QWEN3_LAYERS, (9, 18, 27), "flux2_klein"),
}


@pytest.fixture(scope="module")
def pack(comfy):
    return pack_module("nodes.flux2_clip")


@pytest.fixture(scope="module")
def errors(comfy):
    return pack_module("dla_core.errors")


def _load(family: str, tmp_path_factory, clip_type: str = "FLUX2"):
    import comfy.sd

    build, options, *_ = ENCODERS[family]
    path = cached_build(build, tmp_path_factory.mktemp(f"flux2-te-{family}"))
    return comfy.sd.load_clip(
        [str(path)], clip_type=getattr(comfy.sd.CLIPType, clip_type), model_options=copy.deepcopy(options)
    )


@pytest.fixture(scope="module", params=sorted(ENCODERS))
def encoded(request, comfy, pack, tmp_path_factory):
    """(family, clip, CLIPTextEncode's conditioning, the node's conditioning, features); None without FLUX.2."""
    if not comfy_has_flux2_text_encoders():
        return None
    import nodes as comfy_nodes

    family = request.param
    clip = _load(family, tmp_path_factory)
    native = comfy_nodes.CLIPTextEncode().encode(clip, PROMPT)[0]
    conditioning, features = pack.DLAFlux2TextEncode.execute(clip, PROMPT).result
    return family, clip, native, conditioning, features


def _refused_for_old_comfyui(pack, errors, clip=None) -> bool:
    """On a ComfyUI without FLUX.2: assert the node's one clear error and return True."""
    if comfy_has_flux2_text_encoders():
        return False
    with pytest.raises(errors.DLAInputError, match=NEEDS_NEWER):
        pack.DLAFlux2TextEncode.execute(clip, PROMPT)
    return True


def test_a_comfyui_without_flux2_gets_one_clear_version_line(pack, errors):
    import comfyui_version

    message = pack_module("nodes.compat").flux2_missing_message()  # the line the pack also logs at load
    assert re.match(NEEDS_NEWER, message) and f"this ComfyUI ({comfyui_version.__version__}) " in message
    assert "\n" not in message
    if comfy_has_flux2_text_encoders():
        return
    with pytest.raises(errors.DLAInputError, match=NEEDS_NEWER) as info:
        pack.DLAFlux2TextEncode.execute(object(), PROMPT)
    assert str(info.value) == message


def test_comfy_internals_the_flux2_capture_reads_are_where_expected(pack, errors, encoded):
    """Pins everything ``comfy_flux2_modules`` reads from ComfyUI (the one place touching its internals)."""
    if _refused_for_old_comfyui(pack, errors):
        return
    family, clip, *_ = encoded
    _, _, decoder_layers, native_layers, target = ENCODERS[family]
    modules = pack.comfy_flux2_modules(clip)
    assert modules["family"] == family and modules["target"] == target
    assert len(modules["layers"]) == decoder_layers
    assert modules["native_layers"] == list(native_layers)
    assert modules["has_norm"] is (family == "qwen3")  # the pruned FLUX.2 file has no final norm
    assert type(modules["model"]).__name__ == "Llama2_"


def test_conditioning_equals_clip_text_encode(pack, errors, encoded):
    if _refused_for_old_comfyui(pack, errors):
        return
    _, _, native, conditioning, _ = encoded
    assert len(conditioning) == len(native) == 1
    assert torch.equal(conditioning[0][0], native[0][0])
    assert conditioning[0][1].keys() == native[0][1].keys()


def test_features_hold_every_layer_and_the_native_layers_stack_to_the_conditioning(pack, errors, encoded):
    if _refused_for_old_comfyui(pack, errors):
        return
    family, _, native, _, features = encoded
    _, _, decoder_layers, native_layers, target = ENCODERS[family]
    held = decoder_layers + 1
    assert features.hidden_states.shape[:3] == (1, held, native[0][0].shape[1])
    assert features.layer_indices == tuple(range(held)) and features.family == family
    # The pruned Mistral is the first 30 layers of the 41-state model; Qwen3's count is its own.
    assert features.num_layers == (41 if family == "mistral3" else held)
    assert features.width == native[0][0].shape[2] // 3 and features.text_mask.all() and not features.image_mask.any()
    stacked = torch.cat([features.hidden_states[:, layer] for layer in native_layers], dim=-1)
    assert torch.equal(stacked, native[0][0])
    assert features.extra["target"] == target
    for layer in range(held - 1):  # genuinely different states, not copies of one buffer
        assert not torch.equal(features.hidden_states[:, layer], features.hidden_states[:, layer + 1]), layer


def test_every_captured_layer_is_comfyuis_own_layer_of_that_number(pack, errors, encoded):
    """ComfyUI's ``layer=[a, b, c]`` (the FLUX.2 encoders' convention) == the capture's layers a, b, c.

    Covers the first, a middle and the last state (the last one: the model's output, after the
    final norm when there is one), so both the numbering and the capture's copies are pinned.
    The reference sets the encoder's ``layer`` list, as ComfyUI's FLUX.2 encoders do, and calls
    ``encode_token_weights`` (``encode_from_tokens`` would restore the default list first).
    """
    if _refused_for_old_comfyui(pack, errors):
        return
    family, clip, _, _, features = encoded
    decoder_layers = ENCODERS[family][2]
    encoder = pack.comfy_flux2_modules(clip)
    te = getattr(clip.cond_stage_model, clip.cond_stage_model.clip)
    original = te.layer
    try:
        for layers in ([0, decoder_layers // 2, decoder_layers], [1, 2, decoder_layers - 1]):
            te.layer = layers  # encode_from_tokens would reset it to the default: call the encoder itself
            native = clip.cond_stage_model.encode_token_weights(clip.tokenize(PROMPT))[0]
            stacked = torch.cat([features.hidden_states[:, layer] for layer in layers], dim=-1)
            assert torch.equal(stacked, native), layers
    finally:
        te.layer = original
    assert encoder["native_layers"] == original


@pytest.fixture(scope="module")
def identity_run(encoded):
    """An untrained identity DLA for the encoder's target, made from the features' own spec, and its output."""
    if encoded is None:
        return None
    init_dla = pack_module("dla_core.checkpoint").init_dla
    MLLMSpec = pack_module("dla_core.spec").MLLMSpec
    family, _, native, _, features = encoded
    target = ENCODERS[family][4]
    spec = MLLMSpec(family=features.family, num_layers=features.num_layers, width=features.width, name="tiny")
    module = init_dla(spec, target=target, init="identity", lap_blocks=0)  # blocks are exact identities anyway
    return family, native, features, module


def test_identity_dla_reproduces_native_flux2_conditioning_bit_for_bit(pack, errors, identity_run):
    if _refused_for_old_comfyui(pack, errors):
        return
    family, native, features, module = identity_run
    assert module.config.layer_indices == list(ENCODERS[family][3])
    with torch.no_grad():
        output = module(features)
    assert output.pooled is None and output.token_mask.all()
    assert output.tokens.dtype == native[0][0].dtype
    assert torch.equal(output.tokens, native[0][0])


def test_identity_dla_through_the_dual_layer_aggregation_node_gives_the_native_tokens(pack, errors, identity_run):
    if _refused_for_old_comfyui(pack, errors):
        return
    family, native, features, module = identity_run
    dla_nodes = pack_module("nodes.dla_nodes")
    types = pack_module("nodes.types")
    manage = pack_module("nodes.managed_models").manage
    handle = types.DLAHandle(patcher=manage(module, "default", "identity DLA"), module=module, file_name="identity")
    conditioning = dla_nodes.DLAAggregate.execute(handle, features, 4.0).result[0]
    assert torch.equal(conditioning[0][0], native[0][0])
    assert ("guidance" in conditioning[0][1]) is (family == "mistral3")  # FLUX.2 [dev] is guidance-distilled


def test_klein_features_into_a_dev_dla_is_one_clear_error_naming_the_fix(pack, errors, encoded):
    if _refused_for_old_comfyui(pack, errors):
        return
    family, _, _, _, features = encoded
    if family != "qwen3":
        return  # the dev features are the right ones for a dev DLA (the identity tests above)
    init_dla = pack_module("dla_core.checkpoint").init_dla
    MLLMSpec = pack_module("dla_core.spec").MLLMSpec
    dev = init_dla(MLLMSpec("mistral3", 41, 5120), target="flux2", lap_width=64, lap_blocks=0, lap_mlp_hidden=64)
    dla_nodes = pack_module("nodes.dla_nodes")
    types = pack_module("nodes.types")
    manage = pack_module("nodes.managed_models").manage
    handle = types.DLAHandle(patcher=manage(dev, "default", "dev DLA"), module=dev, file_name="dev")
    with pytest.raises(errors.DLACheckpointError) as info:
        dla_nodes.DLAAggregate.execute(handle, features, 4.0)
    message = str(info.value)
    assert "expects 41 layers of width 5120 (mistral3)" in message and "(qwen3)" in message
    assert "target 'flux2'" in message and "init-dla --target flux2_klein" in message


def test_a_clip_that_is_not_a_flux2_encoder_is_refused_with_the_loader_to_use(pack, errors, tmp_path_factory):
    if _refused_for_old_comfyui(pack, errors):
        return
    other = _load("qwen3", tmp_path_factory, clip_type="STABLE_DIFFUSION")  # the same file as Z-Image's encoder
    with pytest.raises(errors.DLAInputError, match=r"not one of FLUX\.2's text encoders.*type 'flux2'"):
        pack.DLAFlux2TextEncode.execute(other, PROMPT)
    with pytest.raises(errors.DLAInputError, match=r"not a ComfyUI CLIP"):
        pack.DLAFlux2TextEncode.execute("not a clip", PROMPT)
