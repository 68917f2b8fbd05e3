"""FLUX.1 weights and LoRAs in Black Forest Labs' / ComfyUI's layout -> diffusers ``FluxTransformer2DModel`` names.

diffusers' own single-file and kohya-LoRA conversions fix the width at FLUX.1's 3072; ComfyUI
(0.3.7x and newer) reads width and heads from the weights. These conversions read the width from
the file, so the standalone pipeline opens every FLUX file and FLUX LoRA ComfyUI opens. At 3072
the weight conversion gives exactly the tensors diffusers' conversion gives (tested).

The layout (BFL -> diffusers): ``img_in``/``txt_in`` -> ``x_embedder``/``context_embedder``;
``time_in``/``vector_in``/``guidance_in`` -> ``time_text_embed.{timestep,text,guidance}_embedder``;
double blocks split the fused ``qkv`` into ``to_q/k/v`` (image) and ``add_q/k/v_proj`` (text);
single blocks split ``linear1`` into ``to_q/k/v`` + ``proj_mlp``; the final adaLN's
(shift, scale) halves are swapped to diffusers' (scale, shift).
"""
from __future__ import annotations

import torch

_EMBEDDERS = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
_DOUBLE = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
_DOUBLE_NORMS = {
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
}
_SINGLE = {"modulation.lin": "norm.linear", "linear2": "proj_out"}
_SINGLE_NORMS = {"norm.query_norm": "attn.norm_q", "norm.key_norm": "attn.norm_k"}
FINAL_ADALN = "final_layer.adaLN_modulation.1"


def module_targets(module: str, out_features: int, hidden: int) -> list[tuple[str, int, int]]:
    """Where BFL module ``module``'s output rows go: ``[(diffusers module, first row, end row), ...]``.

    Fused projections map to several diffusers modules (rows split in order). The final adaLN maps
    to ``norm_out.linear`` with its halves swapped (see :func:`swap_halves`). Raises ``KeyError``
    naming a module it cannot place, so a wrong file fails loudly.
    """
    if module in _EMBEDDERS:
        return [(_EMBEDDERS[module], 0, out_features)]
    if module == FINAL_ADALN:
        return [("norm_out.linear", 0, out_features)]
    kind, _, rest = module.partition(".")
    index, _, inner = rest.partition(".")
    if kind == "double_blocks":
        block = f"transformer_blocks.{index}"
        if inner in _DOUBLE:
            return [(f"{block}.{_DOUBLE[inner]}", 0, out_features)]
        if inner in _DOUBLE_NORMS:
            return [(f"{block}.{_DOUBLE_NORMS[inner]}", 0, out_features)]
        if inner in ("img_attn.qkv", "txt_attn.qkv"):
            names = ("to_q", "to_k", "to_v") if inner.startswith("img") else ("add_q_proj", "add_k_proj", "add_v_proj")
            return [(f"{block}.attn.{name}", i * hidden, (i + 1) * hidden) for i, name in enumerate(names)]
    elif kind == "single_blocks":
        block = f"single_transformer_blocks.{index}"
        if inner in _SINGLE:
            return [(f"{block}.{_SINGLE[inner]}", 0, out_features)]
        if inner in _SINGLE_NORMS:
            return [(f"{block}.{_SINGLE_NORMS[inner]}", 0, out_features)]
        if inner == "linear1":
            names = ("attn.to_q", "attn.to_k", "attn.to_v")
            parts = [(f"{block}.{name}", i * hidden, (i + 1) * hidden) for i, name in enumerate(names)]
            return parts + [(f"{block}.proj_mlp", 3 * hidden, out_features)]
    raise KeyError(f"unknown FLUX module '{module}'")


def swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """BFL's final adaLN rows are (shift, scale); diffusers' are (scale, shift)."""
    shift, scale = tensor.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def bfl_flux_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a FLUX.1 state dict in BFL key layout (no prefix) to diffusers' key layout."""
    hidden = state["img_in.weight"].shape[0]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        if param == "scale":  # RMSNorm scales are 'weight' in diffusers
            param = "weight"
        if module == FINAL_ADALN:
            tensor = swap_halves(tensor)
        for target, start, end in module_targets(module, tensor.shape[0], hidden):
            out[f"{target}.{param}"] = tensor[start:end]
    return out


def is_bfl_lora(state: dict[str, torch.Tensor]) -> bool:
    """Whether a LoRA uses ComfyUI's / BFL's names (``diffusion_model.<module>.lora_up/lora_down``)."""
    return any(key.endswith(".lora_up.weight") and ("double_blocks." in key or "single_blocks." in key) for key in state)


def bfl_lora_to_diffusers(state: dict[str, torch.Tensor], hidden: int) -> dict[str, torch.Tensor]:
    """A ComfyUI/BFL-format FLUX LoRA as peft keys (``transformer.<module>.lora_A/lora_B.weight``), exact.

    ``alpha / rank`` is folded into ``lora_B`` (so peft's own scale is 1); a fused projection's
    ``lora_up`` rows are split like its weight, and every part shares ``lora_down``, which gives
    exactly the same weight change per row.
    """
    out: dict[str, torch.Tensor] = {}
    for key, up in state.items():
        if not key.endswith(".lora_up.weight"):
            continue
        module = key[: -len(".lora_up.weight")].removeprefix("diffusion_model.").removeprefix("transformer.")
        down = state[key.replace(".lora_up.weight", ".lora_down.weight")]
        rank = down.shape[0]
        alpha_key = key.replace(".lora_up.weight", ".alpha")
        scale = float(state[alpha_key]) / rank if alpha_key in state else 1.0
        up = up.float() * scale
        if module == FINAL_ADALN:
            up = swap_halves(up)
        for target, start, end in module_targets(module, up.shape[0], hidden):
            out[f"transformer.{target}.lora_A.weight"] = down.float().clone()
            out[f"transformer.{target}.lora_B.weight"] = up[start:end].contiguous()
    return out
