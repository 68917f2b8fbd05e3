"""FLUX.1 transformer weights in Black Forest Labs' layout -> diffusers ``FluxTransformer2DModel`` names, any width.

diffusers' own single-file conversion fixes the width at FLUX.1's 3072; ComfyUI (0.3.7x and
newer) reads width and heads from the weights. This conversion reads the width from ``img_in``
too, so the standalone pipeline opens every FLUX file ComfyUI opens. At 3072 it gives exactly the
tensors diffusers' conversion gives (tested).

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
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
_SINGLE = {"modulation.lin": "norm.linear", "linear2": "proj_out"}
_SINGLE_NORMS = {"norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight"}


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    shift, scale = tensor.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def bfl_flux_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a FLUX.1 state dict in BFL key layout (no prefix) to diffusers' key layout.

    Raises ``KeyError`` naming the first key it cannot place, so a wrong file fails loudly.
    """
    hidden = state["img_in.weight"].shape[0]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        if module in _EMBEDDERS:
            out[f"{_EMBEDDERS[module]}.{param}"] = tensor
        elif module == "final_layer.adaLN_modulation.1":
            out[f"norm_out.linear.{param}"] = _swap_halves(tensor)
        elif key.startswith("double_blocks."):
            _, index, rest = key.split(".", 2)
            block = f"transformer_blocks.{index}"
            rest_module = rest.rpartition(".")[0]
            if rest in _DOUBLE_NORMS:
                out[f"{block}.{_DOUBLE_NORMS[rest]}"] = tensor
            elif rest_module in _DOUBLE:
                out[f"{block}.{_DOUBLE[rest_module]}.{param}"] = tensor
            elif rest_module in ("img_attn.qkv", "txt_attn.qkv"):
                names = ("to_q", "to_k", "to_v") if rest_module.startswith("img") else ("add_q_proj", "add_k_proj", "add_v_proj")
                for name, part in zip(names, tensor.split(hidden, dim=0)):
                    out[f"{block}.attn.{name}.{param}"] = part
            else:
                raise KeyError(f"unknown FLUX double-block key '{key}'")
        elif key.startswith("single_blocks."):
            _, index, rest = key.split(".", 2)
            block = f"single_transformer_blocks.{index}"
            rest_module = rest.rpartition(".")[0]
            if rest in _SINGLE_NORMS:
                out[f"{block}.{_SINGLE_NORMS[rest]}"] = tensor
            elif rest_module in _SINGLE:
                out[f"{block}.{_SINGLE[rest_module]}.{param}"] = tensor
            elif rest_module == "linear1":
                mlp = tensor.shape[0] - 3 * hidden
                parts = tensor.split([hidden, hidden, hidden, mlp], dim=0)
                for name, part in zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), parts):
                    out[f"{block}.{name}.{param}"] = part
            else:
                raise KeyError(f"unknown FLUX single-block key '{key}'")
        else:
            raise KeyError(f"unknown FLUX key '{key}'")
    return out
