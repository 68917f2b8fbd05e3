"""BFL-layout FLUX files -> diffusers, at any width (diffusers' own single-file conversion fixes 3072)."""

from __future__ import annotations

import pytest
import torch

from dla_core.flux.weights import flux_config_from_bfl_checkpoint, load_flux_transformer, write_config_folder
from dla_tiny.flux import build_tiny_flux_comfy

pytestmark = pytest.mark.slow


def test_conversion_equals_diffusers_single_file_at_flux_width(tmp_path):
    """At FLUX.1's 3072 the pack's conversion gives exactly the tensors diffusers' from_single_file gives."""
    from diffusers import FluxTransformer2DModel

    path = build_tiny_flux_comfy(tmp_path / "flux.safetensors", seed=0)
    config = write_config_folder(tmp_path / "config", flux_config_from_bfl_checkpoint(path), "FluxTransformer2DModel")
    reference = FluxTransformer2DModel.from_single_file(
        str(path), config=str(config), torch_dtype=torch.bfloat16, local_files_only=True
    ).state_dict()
    ours = load_flux_transformer(path, dtype=torch.bfloat16).state_dict()
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(ours[key], value), key


def test_a_narrow_flux_loads_and_runs(tmp_path):
    """256 wide (what newer ComfyUI loads from the same layout): loads, and its output depends on the weights."""
    path = build_tiny_flux_comfy(tmp_path / "flux256.safetensors", seed=0, hidden=256)
    model = load_flux_transformer(path, dtype=torch.float32)
    assert model.config.num_attention_heads == 2 and model.config.attention_head_dim == 128
    from safetensors.torch import load_file

    raw = load_file(str(path))
    assert torch.equal(model.x_embedder.weight, raw["img_in.weight"].float())
    qkv = raw["double_blocks.0.img_attn.qkv.weight"].float()
    assert torch.equal(model.transformer_blocks[0].attn.to_k.weight, qkv[256:512])
    shift, scale = raw["final_layer.adaLN_modulation.1.weight"].float().chunk(2)
    assert torch.equal(model.norm_out.linear.weight, torch.cat([scale, shift]))
