"""Tiny random FLUX.2 transformers in ComfyUI's file layout (test-only; needs a ComfyUI with FLUX.2, >= 0.3.7x).

The module tree comes from ComfyUI's own ``comfy.ldm.flux.model.Flux`` with the config its
model detection derives for FLUX.2 (global modulation, SiLU-gated MLP, no biases, 128 latent
channels, patch 1, 4 x 32 rope axes), at a tiny width: ComfyUI reads width, heads, depth and the
text width back from the weights, so a 256-wide FLUX.2 [dev] (with guidance) or [klein]
(without) is a few MB. Weights are seeded random values scaled to keep activations O(1).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

FLUX2_HEAD_DIM = 128  # sum of FLUX.2's rope axes (4 x 32)


def comfy_has_flux2() -> bool:
    """Whether the imported ComfyUI implements FLUX.2 (its latent format and detection)."""
    import comfy.latent_formats

    return hasattr(comfy.latent_formats, "Flux2")


def comfy_has_flux2_text_encoders() -> bool:
    """Whether the imported ComfyUI has FLUX.2's text encoders (CLIPLoader type ``flux2``)."""
    import comfy.text_encoders.flux

    return hasattr(comfy.text_encoders.flux, "Flux2TEModel")


def tiny_flux2_state_dict(
    seed: int = 0,
    hidden: int = 256,
    context_width: int = 96,
    double_blocks: int = 1,
    single_blocks: int = 1,
    guidance: bool = True,
    dtype: torch.dtype = torch.bfloat16,
) -> dict:
    """Random FLUX.2 weights with ComfyUI's key names (``guidance=False``: the [klein] variant)."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    model = Flux(
        image_model="flux2",
        in_channels=128,
        out_channels=128,
        vec_in_dim=None,
        context_in_dim=context_width,
        hidden_size=hidden,
        mlp_ratio=3.0,
        num_heads=hidden // FLUX2_HEAD_DIM,
        depth=double_blocks,
        depth_single_blocks=single_blocks,
        axes_dim=[32, 32, 32, 32],
        theta=2000,
        patch_size=1,
        qkv_bias=False,
        guidance_embed=guidance,
        txt_ids_dims=[3],
        global_modulation=True,
        mlp_silu_act=True,
        ops_bias=False,
        default_ref_method="index",
        ref_index_scale=10.0,
        dtype=torch.float32,
        device="cpu",
        operations=comfy.ops.disable_weight_init,
    )
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in model.state_dict().items():
        if tensor.ndim == 1:  # RMSNorm scales
            value = torch.ones(tensor.shape)
        else:
            fan_in = tensor.shape[-1]
            gain = 0.1 if "modulation" in name or "adaLN" in name else 1.0
            value = torch.randn(tensor.shape, generator=generator) * (gain / math.sqrt(fan_in))
        state[name] = value.to(dtype)
    return state


def build_tiny_flux2(path: str | Path, seed: int = 0, **kwargs) -> Path:
    """Write :func:`tiny_flux2_state_dict` as safetensors at ``path`` (``UNETLoader`` detects FLUX.2)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_flux2_state_dict(seed=seed, **kwargs), str(path), metadata={"format": "pt"})
    return path
