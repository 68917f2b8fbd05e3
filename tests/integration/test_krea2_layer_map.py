"""Krea 2 Layer Map (issue 21.4): Krea 2's own text fusion read from the loaded MODEL, in a real ComfyUI.

With the tiny random DiT (tests/lib/dla_tiny/krea2.py, loaded and detected by ComfyUI) the map pins
invariants, not findings: shares are non-negative and sum to 1 per token; a projection that selects one
layer behind pass-through blocks puts 100% on that layer; the pass re-runs the model's own fusion (its
fused vector is what the DiT computes); the model's output is unchanged. On ComfyUI 0.3.64 (no Krea 2)
the node gives the one-line notice.
"""

from __future__ import annotations

import pytest
import torch
from dla_harness import pack_module

from dla_tiny.krea2 import (
    DIT_TXT_LAYERS,
    STAGING_TXT_WIDTH,
    build_tiny_krea2_dit,
    comfy_has_krea2,
    tiny_krea2_dit_state_dict,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SELECTED_SLOT = 4  # hidden state 14


@pytest.fixture(scope="module")
def pack(comfy):
    return pack_module("nodes.krea2_layer_map")


@pytest.fixture(scope="module")
def errors(comfy):
    return pack_module("dla_core.errors")


@pytest.fixture(scope="module")
def model(comfy, tmp_path_factory):
    if not comfy_has_krea2():
        yield None
        return
    import comfy.model_management
    import comfy.sd

    from dla_tiny.cache import cached_build

    yield comfy.sd.load_diffusion_model(str(cached_build(build_tiny_krea2_dit, tmp_path_factory.mktemp("k2"), seed=0)))
    comfy.model_management.unload_all_models()


def _features(width: int = STAGING_TXT_WIDTH, family: str = "qwen3_vl", tokens: int = 7):
    MLLMFeatures = pack_module("dla_core.features").MLLMFeatures
    hidden = torch.randn(1, 37, tokens, width, generator=torch.Generator().manual_seed(3))
    image = torch.zeros(1, tokens, dtype=torch.bool)
    image[0, 1:4] = True  # three image tokens inside the sequence, as joint encoding gives
    return MLLMFeatures(
        hidden_states=hidden,
        image_mask=image,
        text_mask=~image,
        attention_mask=torch.ones_like(image),
        family=family,
        num_layers=37,
        width=width,
        layer_indices=tuple(range(37)),
    )


def _refused(pack, errors, model) -> bool:
    if comfy_has_krea2():
        return False
    with pytest.raises(errors.DLAInputError, match=r"^Krea 2 needs a newer ComfyUI"):
        pack.DLAKrea2LayerMap.execute(model, _features(), 256, 256)
    return True


def _items(features):
    krea2 = pack_module("dla_core.krea2")
    context = krea2.stack_taps(features.hidden_states)  # [1, tokens, 12 * width]
    return context.reshape(context.shape[1], DIT_TXT_LAYERS, STAGING_TXT_WIDTH)


def test_shares_are_non_negative_and_sum_to_one_per_token(pack, errors, model):
    if _refused(pack, errors, model):
        return
    fusion, _, _ = pack.krea2_text_fusion(model)
    with torch.inference_mode():
        shares, _ = pack.fusion_shares(fusion, _items(_features()).to(model.model.get_dtype_inference()))
    assert shares.shape == (7, 12) and (shares >= 0).all()
    assert torch.allclose(shares.sum(dim=-1), torch.ones(7), atol=1e-5)
    assert shares.std(dim=0).sum() > 0  # tokens differ: the map reads each token's own attention


def test_the_map_reruns_krea2s_own_fusion_exactly(pack, errors, model):
    """The fused vector of the map's pass == what the DiT's txtfusion hands its refiner blocks."""
    if _refused(pack, errors, model):
        return
    fusion, txtlayers, txtdim = pack.krea2_text_fusion(model)
    assert (txtlayers, txtdim) == (DIT_TXT_LAYERS, STAGING_TXT_WIDTH)
    features = _features()
    dtype = model.model.get_dtype_inference()
    context = pack_module("dla_core.krea2").stack_taps(features.hidden_states).to(dtype)
    seen = []
    handle = fusion.refiner_blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        with torch.inference_mode():
            fusion(context.reshape(1, 7, txtlayers, txtdim))  # as SingleStreamDiT._unpack_context shapes it
            _, fused = pack.fusion_shares(fusion, _items(features).to(dtype))
    finally:
        handle.remove()
    assert torch.allclose(fused, seen[0][0], atol=1e-5, rtol=1e-5)


def test_a_one_layer_projection_behind_pass_through_blocks_puts_everything_on_that_layer(pack, errors, comfy):
    if _refused(pack, errors, None):
        return
    import comfy.sd

    state = tiny_krea2_dit_state_dict(seed=0)
    for block in range(2):
        for name in ("attn.wo.weight", "mlp.down.weight"):  # residual branches output 0: the blocks pass through
            key = f"txtfusion.layerwise_blocks.{block}.{name}"
            state[key] = torch.zeros_like(state[key])
    projector = torch.zeros_like(state["txtfusion.projector.weight"])
    projector[0, SELECTED_SLOT] = 1.0
    state["txtfusion.projector.weight"] = projector
    model = comfy.sd.load_diffusion_model_state_dict(state)
    layer_map = pack.krea2_layer_map(model, _features())
    expected = torch.nn.functional.one_hot(torch.tensor(SELECTED_SLOT), 12).float()
    assert torch.equal(layer_map.shares["text"], expected) and torch.equal(layer_map.shares["image"], expected)
    assert "strongest: layer 14 (100%)" in pack.summarize_krea2(layer_map)


def test_the_node_draws_both_kinds_and_leaves_the_model_unchanged(pack, errors, model):
    if _refused(pack, errors, model):
        return
    diffusion_model = model.model.diffusion_model
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(5)).to(model.model.get_dtype_inference())
    t = torch.tensor([0.5])
    context = torch.randn(1, 5, 12 * STAGING_TXT_WIDTH, generator=torch.Generator().manual_seed(6)).to(x.dtype)
    with torch.inference_mode():
        before = diffusion_model(x, t, context)
    image, summary = pack.DLAKrea2LayerMap.execute(model, _features(), 320, 256).result
    with torch.inference_mode():
        after = diffusion_model(x, t, context)
    assert torch.equal(before, after)
    for module in diffusion_model.modules():  # no hook of the map left behind
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert image.shape == (1, 256, 320, 3) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert summary.startswith("Share of Krea 2's fused text vector")
    assert "text tokens (4):" in summary and "image tokens (3):" in summary


def test_bad_inputs_are_one_clear_error_each(pack, errors, model, tiny_models_dir, tiny_names):
    if _refused(pack, errors, model):
        return
    import comfy.sd

    flux = comfy.sd.load_diffusion_model(str(tiny_models_dir / "diffusion_models" / tiny_names.flux))
    with pytest.raises(errors.DLAInputError, match=r"not Krea 2's DiT.*Load Diffusion Model"):
        pack.DLAKrea2LayerMap.execute(flux, _features(), 256, 256)
    with pytest.raises(errors.DLAInputError, match=r"\(qwen3\).*Krea 2 Joint Encode"):
        pack.DLAKrea2LayerMap.execute(model, _features(family="qwen3"), 256, 256)  # FLUX.2 [klein]'s encoder
    with pytest.raises(errors.DLAInputError, match=r"fuses 12 layers of width 40, but the features are 8 wide"):
        pack.DLAKrea2LayerMap.execute(model, _features(width=8), 256, 256)
    with pytest.raises(errors.DLAInputError, match=r"mllm_features.*Krea 2 Joint Encode"):
        pack.DLAKrea2LayerMap.execute(model, "not features", 256, 256)
