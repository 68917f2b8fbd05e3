"""Tiny Qwen-Image VAE and FLUX text-encoder builders: the keys ComfyUI's loaders detect, seeded weights."""

import torch

from dla_tiny.flux_text_encoders import TINY_CLIP_L_CONFIG, tiny_clip_l_state_dict, tiny_t5xxl_state_dict
from dla_tiny.qwen_image import tiny_qwen_image_vae_state_dict


def test_qwen_vae_has_the_wan21_layout_comfyui_detects():
    state = tiny_qwen_image_vae_state_dict()
    assert len(state) == 194  # the Wan 2.1 VAE's key count
    assert "decoder.middle.0.residual.0.gamma" in state  # Wan VAE marker
    assert "decoder.upsamples.0.upsamples.0.residual.2.weight" not in state  # would mean Wan 2.2
    assert state["encoder.conv1.weight"].shape == (96, 3, 3, 3, 3)  # base width 96 (fixed by ComfyUI)
    assert state["encoder.head.2.weight"].shape == (32, 384, 3, 3, 3)  # 2 x 16 latent channels
    assert state["decoder.head.2.weight"].shape == (3, 96, 3, 3, 3)


def test_qwen_vae_weights_are_seeded():
    a, b, c = (
        tiny_qwen_image_vae_state_dict(seed=0),
        tiny_qwen_image_vae_state_dict(seed=0),
        tiny_qwen_image_vae_state_dict(seed=1),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.conv1.weight"], c["encoder.conv1.weight"])


def test_clip_l_keeps_flux_widths_and_the_second_layer_comfyui_identifies_it_by():
    state = tiny_clip_l_state_dict()
    assert "text_model.encoder.layers.1.mlp.fc1.weight" in state
    assert state["text_model.final_layer_norm.weight"].shape == (768,)  # FLUX's pooled slot
    assert state["text_model.encoder.layers.0.mlp.fc1.weight"].shape == (TINY_CLIP_L_CONFIG["intermediate_size"], 768)


def test_t5_is_4096_wide_and_not_mistaken_for_a_full_t5xxl():
    state = tiny_t5xxl_state_dict()
    assert state["shared.weight"].shape[1] == 4096  # FLUX's token slot
    assert "encoder.block.23.layer.1.DenseReluDense.wi_1.weight" not in state
    assert all(not key.startswith("text_model") for key in state)
