"""Krea 2 target (issue 21.3): 12 x 2560 per token, identity init through the LAP's ``stack`` pool, fusion shares.

Pure ``dla_core`` (no ComfyUI). The ComfyUI side (capture from ComfyUI's own Krea 2 text encoder and
bit identity against ``CLIPTextEncode``; the layer map read from a loaded Krea 2 ``MODEL``) is in
tests/integration/test_krea2_clip.py and tests/integration/test_krea2_layer_map.py.
"""

from __future__ import annotations

import pytest
import torch

from dla_core import krea2
from dla_core.checkpoint import init_dla, load_dla, save_dla
from dla_core.cli import main as cli_main
from dla_core.dla import TARGETS
from dla_core.errors import DLACheckpointError, DLAInputError
from dla_core.features import MLLMFeatures
from dla_core.lap import LayerwiseAttentionPooling
from dla_core.spec import MLLMSpec

TINY_WIDTH = 4


def _features(family: str = krea2.FAMILY, num_layers: int = krea2.NUM_STATES, width: int = TINY_WIDTH, tokens=6):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, num_layers, tokens, width, generator=generator) * 30  # large values: exactness matters
    image = torch.zeros(1, tokens, dtype=torch.bool)
    image[0, 1:3] = True  # a joint encoding: image tokens inside the sequence
    return MLLMFeatures(
        hidden_states=hidden,
        image_mask=image,
        text_mask=~image,
        attention_mask=torch.ones_like(image),
        family=family,
        num_layers=num_layers,
        width=width,
        layer_indices=tuple(range(num_layers)),
    )


def test_krea2_target_is_twelve_qwen3_vl_4b_states_per_token():
    spec = TARGETS["krea2"]
    assert spec.context_width == 12 * 2560 == krea2.CONTEXT_WIDTH and spec.pooled_width == 0
    assert not spec.distilled_guidance and spec.layer_slots
    native = spec.native
    assert (native.family, native.num_layers, native.width) == ("qwen3_vl", 37, 2560)
    assert native.layers == (2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35)


def test_identity_dla_reproduces_krea2_conditioning_bit_for_bit_text_and_image_tokens():
    dla = init_dla(MLLMSpec("qwen3_vl", 37, TINY_WIDTH), target="krea2", init="identity", context_width=48)
    config = dla.config
    assert config.layer_indices == list(krea2.TAP_LAYERS) and config.lap_pool == "stack"
    assert config.output_slots == 12 and config.fuse == "sequence"
    features = _features()
    with torch.no_grad():
        output = dla(features)
    expected = krea2.stack_taps(features.hidden_states)
    assert output.pooled is None and output.token_mask.all()
    assert torch.equal(output.tokens, expected)  # image tokens keep their place (fuse "sequence")
    assert not torch.equal(expected[..., :TINY_WIDTH], expected[..., TINY_WIDTH : 2 * TINY_WIDTH])


def test_stack_taps_is_comfyuis_flattening_of_the_twelve_states():
    hidden = _features().hidden_states
    stacked = torch.stack([hidden[:, layer] for layer in krea2.TAP_LAYERS], dim=1)  # [1, 12, tokens, width]
    # comfy/text_encoders/krea2.py: out.permute(0, 2, 1, 3).reshape(b, seq, n * h)
    assert torch.equal(krea2.stack_taps(hidden), stacked.permute(0, 2, 1, 3).reshape(1, 6, -1))
    subset = list(range(0, 37, 3)) + [35]  # features holding only some states (2, 5, ... must be there)
    subset = sorted(set(subset) | set(krea2.TAP_LAYERS))
    assert torch.equal(krea2.stack_taps(hidden[:, subset], subset), krea2.stack_taps(hidden))


def test_full_size_krea2_identity_dla_is_small_thanks_to_the_shared_slot_projection():
    with torch.device("meta"):
        dla = init_dla(TARGETS["krea2"].native.spec(), target="krea2", init="identity", lap_blocks=0)
    assert dla.config.context_width == dla.config.lap_output_width == 30720
    assert dla.output_proj.weight.shape == (2560, 2560) and dla.lap_text.pool_fc is None
    assert dla.num_parameters() < 8_000_000  # vs 2.8 B with one 30720 x 30720 map per LAP and the output


def test_identity_dla_round_trips_a_checkpoint(tmp_path):
    dla = init_dla(MLLMSpec("qwen3_vl", 37, TINY_WIDTH), target="krea2", init="identity", context_width=48)
    loaded = load_dla(save_dla(dla, tmp_path / "krea2.safetensors"))
    assert loaded.config == dla.config
    features = _features()
    with torch.no_grad():
        assert torch.equal(loaded(features).tokens, krea2.stack_taps(features.hidden_states))


def test_a_random_krea2_dla_with_lap_blocks_outputs_the_slot_layout_and_trains():
    dla = init_dla(
        MLLMSpec("qwen3_vl", 37, TINY_WIDTH), target="krea2", init="identity", context_width=48, lap_blocks=1
    )
    features = _features()
    output = dla(features).tokens
    assert output.shape == (1, 6, 48)
    output.square().mean().backward()
    # Identity zeroes the blocks' residual outputs; their gradients are not zero, so training moves them.
    assert dla.output_proj.weight.grad.abs().sum() > 0 and dla.lap_text.blocks[0].attn_out.weight.grad.abs().sum() > 0


def test_flux2_klein_features_into_a_krea2_dla_name_both_sides_and_the_fix():
    dla = init_dla(krea2_native_spec(), target="krea2", init="identity", lap_blocks=0)  # 6.6 M parameters
    with pytest.raises(DLACheckpointError) as info:
        dla(_features(family="qwen3", num_layers=37, width=2560, tokens=2))  # FLUX.2 [klein] 4B's Qwen3-4B
    message = str(info.value)
    assert "expects 37 layers of width 2560 (qwen3_vl)" in message and "(qwen3)" in message
    assert "target 'krea2'" in message and "init-dla --target flux2_klein" in message


def krea2_native_spec() -> MLLMSpec:
    return TARGETS["krea2"].native.spec()


def test_identity_for_krea2_refuses_another_family():
    with pytest.raises(DLAInputError, match=r"reproduces its own text encoder.*Qwen3-VL-4B.*--init random"):
        init_dla(MLLMSpec("mistral3", 41, 5120), target="krea2", init="identity")


def test_stack_pool_needs_every_layer_in_its_own_slot():
    with pytest.raises(DLAInputError, match="side by side"):
        LayerwiseAttentionPooling(3, 4, 4, out_width=8, heads=1, blocks=0, pool="stack")
    lap = LayerwiseAttentionPooling(3, 4, 4, out_width=12, heads=1, blocks=1, pool="stack", input_norm=False)
    with pytest.raises(DLAInputError, match="in their order"):
        lap.init_identity_stack([2, 1, 0])
    lap.init_identity_stack([0, 1, 2])
    items = torch.randn(5, 3, 4)
    assert torch.equal(lap(items), items.reshape(5, 12))
    shares, output = lap.layer_attention(items)
    assert torch.equal(output, items.reshape(5, 12))
    assert torch.allclose(shares.sum(-1), torch.ones(5))


def test_cli_writes_a_krea2_identity_dla_without_an_mllm_folder(tmp_path, capsys):
    out = tmp_path / "krea2_identity.safetensors"
    code = cli_main(["init-dla", "--target", "krea2", "--init", "identity", "--lap-blocks", "0", "--out", str(out)])
    assert code == 0 and "-> krea2" in capsys.readouterr().out
    config = load_dla(out).config
    assert (config.mllm_family, config.num_layers, config.mllm_width) == ("qwen3_vl", 37, 2560)
    assert config.output_slots == 12 and config.layer_indices == list(krea2.TAP_LAYERS)


# ---------------------------------------------------------------------- Krea 2's own fusion: shares
def test_fusion_shares_of_pass_through_blocks_and_a_one_layer_projection_are_all_on_that_layer():
    items, layers, width = 4, 12, 8
    states = torch.randn(items, layers, width)
    identity = torch.eye(layers).expand(items, -1, -1)
    weights = torch.zeros(layers)
    weights[5] = 1.0
    terms = states * weights[None, :, None]  # the projection's term per slot
    shares = krea2.fusion_layer_shares([identity, identity], terms)
    assert torch.equal(shares, torch.nn.functional.one_hot(torch.full((items,), 5), layers).float())


def test_fusion_shares_sum_to_one_per_token_with_mixing_blocks():
    generator = torch.Generator().manual_seed(1)
    items, layers, width = 3, 12, 8
    x = torch.randn(items, layers, width, generator=generator)
    branch = torch.randn(items, layers, width, generator=generator)
    q, k = torch.randn(items, 4, layers, 2, generator=generator), torch.randn(items, 2, layers, 2, generator=generator)
    probs = krea2.attention_probs(q, k)
    assert torch.allclose(probs.sum(-1), torch.ones(items, layers))
    mixing = krea2.block_mixing(x, branch, probs)
    terms = torch.randn(items, layers, width, generator=generator)
    shares = krea2.fusion_layer_shares([mixing, mixing], terms)
    assert (shares >= 0).all() and torch.allclose(shares.sum(-1), torch.ones(items))


# ---------------------------------------------------------------------- the Hugging Face Qwen3-VL side
def test_init_dla_for_a_hugging_face_qwen3_vl_4b_folder_is_the_native_krea2_dla(tmp_path):
    """A Krea 2 DLA made from Qwen3-VL-4B's config.json reads the same 37 x 2560 states as ComfyUI's encoder."""
    import json

    folder = tmp_path / "Qwen3-VL-4B-Instruct"
    folder.mkdir()
    text_config = {"hidden_size": 2560, "num_hidden_layers": 36}
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3_vl", "text_config": text_config}))
    args = ["init-dla", "--target", "krea2", "--init", "identity", "--lap-blocks", "0"]
    assert cli_main([*args, "--mllm", str(folder), "--out", str(tmp_path / "hf.safetensors")]) == 0
    assert cli_main([*args, "--out", str(tmp_path / "native.safetensors")]) == 0
    from_hf, native = load_dla(tmp_path / "hf.safetensors").config, load_dla(tmp_path / "native.safetensors").config
    assert from_hf.mllm_spec() == native.mllm_spec() == TARGETS["krea2"].native.spec().__class__("qwen3_vl", 37, 2560)
    assert {k: v for k, v in from_hf.to_dict().items() if k != "mllm_name"} == {
        k: v for k, v in native.to_dict().items() if k != "mllm_name"
    }


def test_identity_dla_stacks_the_twelve_taps_of_a_hugging_face_qwen3_vl_joint_encoding(tmp_path):
    """From transformers' Qwen3-VL (36 decoder layers, tiny width), text and image tokens: per valid token, exactly
    Krea 2's stack of hidden states 2, 5, ..., 35, in the MLLM's own token order."""
    from PIL import Image

    from dla_core.mllm import encode_joint, load_mllm
    from dla_tiny import build_tiny_qwen3vl

    width = 64
    mllm = load_mllm(build_tiny_qwen3vl(tmp_path / "qwen3vl-36", num_layers=36, hidden_size=width), dtype="fp32")
    reference = Image.fromarray(
        (torch.rand(48, 64, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()
    )
    features = encode_joint(mllm, "the cat on a red sofa", [reference])
    assert (features.family, features.num_layers, features.width) == ("qwen3_vl", 37, width)
    assert features.image_mask.any() and features.text_mask.any()
    dla = init_dla(mllm.spec, target="krea2", init="identity", context_width=12 * width, lap_blocks=0)
    with torch.no_grad():
        output = dla(features)
    valid = (features.text_mask | features.image_mask)[0]
    expected = krea2.stack_taps(features.hidden_states.float())[:, valid]
    assert output.token_mask.all() and torch.equal(output.tokens, expected)
