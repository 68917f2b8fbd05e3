"""Tiny random FLUX text encoders (CLIP-L + T5-XXL) in the layouts of ``clip_l.safetensors`` and
``t5xxl_fp8_e4m3fn_scaled.safetensors``, for ComfyUI's ``DualCLIPLoader`` (type ``flux``).

ComfyUI builds these encoders from fixed configs (CLIP-L: 12 layers; T5-XXL: 24 layers,
4.7B parameters) whatever the file holds. ``comfy.sd.load_clip(..., model_options=...)``
shrinks them through the entries in :data:`COMFY_MODEL_OPTIONS` (``model_config`` for CLIP-L,
``t5xxl_model_config``); the ``DualCLIPLoader`` node passes none, so tests load these files
through a test-only loader that adds them. FLUX fixes two widths: the T5 slot is 4096 wide
and the pooled CLIP-L vector 768 wide, so only depth, heads and MLP sizes shrink (CLIP-L
keeps two layers: ComfyUI tells the two files apart by ``text_model.encoder.layers.1``).

Weights are small seeded random values. Nothing here imports ComfyUI.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .files import write_safetensors

CLIP_L_WIDTH = 768  # FLUX's pooled slot
CLIP_L_VOCAB = 49408
CLIP_L_POSITIONS = 77
T5_WIDTH = 4096  # FLUX's token slot
T5_VOCAB = 32128
T5_RELATIVE_BUCKETS = 32

TINY_CLIP_L_CONFIG = {"num_hidden_layers": 2, "intermediate_size": 64}  # heads stay 12 (64 per head)
TINY_T5_CONFIG = {"num_layers": 1, "num_heads": 2, "d_kv": 64, "d_ff": 64}
# model_options for comfy.sd.load_clip. CLIP-L's entry is "model_config": ComfyUI rewrites
# "clip_l_model_config" from it (plus the file's position count) when it sees a CLIP-L file.
# Pass copies: ComfyUI adds keys to the dict it is given.
COMFY_MODEL_OPTIONS = {"model_config": TINY_CLIP_L_CONFIG, "t5xxl_model_config": TINY_T5_CONFIG}


def _normal(generator: torch.Generator, shape, std: float) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.float32).normal_(0.0, std, generator=generator)


def tiny_clip_l_state_dict(seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """CLIP-L text model keys (``text_model.*``, ``text_projection.weight``) at :data:`TINY_CLIP_L_CONFIG` sizes."""
    gen = torch.Generator().manual_seed(seed)
    width, inter = CLIP_L_WIDTH, TINY_CLIP_L_CONFIG["intermediate_size"]
    state = {
        "text_model.embeddings.token_embedding.weight": _normal(gen, (CLIP_L_VOCAB, width), 0.02),
        "text_model.embeddings.position_embedding.weight": _normal(gen, (CLIP_L_POSITIONS, width), 0.01),
        "text_model.final_layer_norm.weight": torch.ones(width),
        "text_model.final_layer_norm.bias": torch.zeros(width),
        "text_projection.weight": _normal(gen, (width, width), width**-0.5),
    }
    for i in range(TINY_CLIP_L_CONFIG["num_hidden_layers"]):
        p = f"text_model.encoder.layers.{i}"
        for norm in ("layer_norm1", "layer_norm2"):
            state[f"{p}.{norm}.weight"] = torch.ones(width)
            state[f"{p}.{norm}.bias"] = torch.zeros(width)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            state[f"{p}.self_attn.{proj}.weight"] = _normal(gen, (width, width), width**-0.5)
            state[f"{p}.self_attn.{proj}.bias"] = torch.zeros(width)
        state[f"{p}.mlp.fc1.weight"] = _normal(gen, (inter, width), width**-0.5)
        state[f"{p}.mlp.fc1.bias"] = torch.zeros(inter)
        state[f"{p}.mlp.fc2.weight"] = _normal(gen, (width, inter), inter**-0.5)
        state[f"{p}.mlp.fc2.bias"] = torch.zeros(width)
    return {k: v.to(dtype) for k, v in state.items()}


def tiny_t5xxl_state_dict(seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """T5 encoder keys (``encoder.block.*``, ``shared.weight``) at :data:`TINY_T5_CONFIG` sizes, 4096 wide."""
    gen = torch.Generator().manual_seed(seed)
    width, inner, ff = T5_WIDTH, TINY_T5_CONFIG["num_heads"] * TINY_T5_CONFIG["d_kv"], TINY_T5_CONFIG["d_ff"]
    state = {
        "shared.weight": _normal(gen, (T5_VOCAB, width), 1.0),
        "encoder.final_layer_norm.weight": torch.ones(width),
    }
    for i in range(TINY_T5_CONFIG["num_layers"]):
        p = f"encoder.block.{i}.layer"
        for proj in ("q", "k", "v"):
            state[f"{p}.0.SelfAttention.{proj}.weight"] = _normal(gen, (inner, width), width**-0.5)
        state[f"{p}.0.SelfAttention.o.weight"] = _normal(gen, (width, inner), 0.5 * inner**-0.5)
        if i == 0:
            state[f"{p}.0.SelfAttention.relative_attention_bias.weight"] = _normal(
                gen, (T5_RELATIVE_BUCKETS, TINY_T5_CONFIG["num_heads"]), 0.1
            )
        state[f"{p}.0.layer_norm.weight"] = torch.ones(width)
        state[f"{p}.1.DenseReluDense.wi_0.weight"] = _normal(gen, (ff, width), width**-0.5)
        state[f"{p}.1.DenseReluDense.wi_1.weight"] = _normal(gen, (ff, width), width**-0.5)
        state[f"{p}.1.DenseReluDense.wo.weight"] = _normal(gen, (width, ff), 0.5 * ff**-0.5)
        state[f"{p}.1.layer_norm.weight"] = torch.ones(width)
    return {k: v.to(dtype) for k, v in state.items()}


def build_tiny_clip_l(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write :func:`tiny_clip_l_state_dict` to ``path`` (.safetensors)."""
    return write_safetensors(path, tiny_clip_l_state_dict(seed, dtype))


def build_tiny_t5xxl(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write :func:`tiny_t5xxl_state_dict` to ``path`` (.safetensors)."""
    return write_safetensors(path, tiny_t5xxl_state_dict(seed, dtype))
