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

Loading: :func:`load_flux_transformer` / :func:`load_flux_vae` open a diffusers folder or a
single-file checkpoint (BFL / ComfyUI key layout, as ComfyUI's ``UNETLoader`` / ``VAELoader``
read it) with a config inferred from the weights and written to a local folder, so
``from_single_file`` never touches the network.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..errors import DLAInputError

# FLUX.1-dev's transformer config (diffusers names).
FLUX_DEV_TRANSFORMER_CONFIG = {
    "patch_size": 1,
    "in_channels": 64,
    "out_channels": None,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}

# FLUX.1's VAE config (diffusers names); latent scale/shift are the values ComfyUI uses.
FLUX_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
}


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
    return any(
        key.endswith(".lora_up.weight") and ("double_blocks." in key or "single_blocks." in key) for key in state
    )


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


# ----------------------------------------------------------------------------- loading


def _safetensors_keys_and_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def _strip_prefix(shapes: dict[str, tuple[int, ...]]) -> tuple[str, dict[str, tuple[int, ...]]]:
    """Find the prefix in front of ``img_in.weight`` (``model.diffusion_model.`` in full checkpoints)."""
    for key in shapes:
        if key.endswith("img_in.weight"):
            prefix = key[: -len("img_in.weight")]
            return prefix, {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}
    raise DLAInputError(
        "not a FLUX transformer checkpoint (no 'img_in.weight'): pass a FLUX.1 file or diffusers folder."
    )


def _count_blocks(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def flux_config_from_bfl_checkpoint(path: str | Path) -> dict:
    """Infer the diffusers transformer config of a BFL-layout FLUX file, the way ComfyUI does.

    ComfyUI assumes head dim 128 and rope axes (16, 56, 56); so does this.
    """
    shapes = _safetensors_keys_and_shapes(Path(path))
    _, shapes = _strip_prefix(shapes)
    hidden, in_features = shapes["img_in.weight"]
    head_dim = 128
    return {
        **FLUX_DEV_TRANSFORMER_CONFIG,
        "in_channels": in_features,
        "num_layers": _count_blocks(shapes, "double_blocks."),
        "num_single_layers": _count_blocks(shapes, "single_blocks."),
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": shapes["txt_in.weight"][1],
        "pooled_projection_dim": shapes["vector_in.in_layer.weight"][1],
        "guidance_embeds": "guidance_in.in_layer.weight" in shapes,
    }


def write_config_folder(folder: str | Path, config: dict, class_name: str) -> Path:
    """Write a ``config.json`` usable as ``from_single_file(..., config=folder)``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": class_name, **config}, indent=2))
    return folder


def load_flux_transformer(path: str | Path, dtype: torch.dtype = torch.float32, config: str | Path | None = None):
    """Load a FLUX transformer from a diffusers folder or a single ``.safetensors`` file.

    For a single file (BFL / ComfyUI layout) the config comes from ``config`` (a folder with
    ``config.json``, or a folder holding a ``transformer/`` subfolder) or is inferred from the
    weights; nothing is downloaded.
    """
    from diffusers import FluxTransformer2DModel

    path = Path(path)
    if not path.exists():
        raise DLAInputError(f"FLUX transformer not found: {path}. Pass a diffusers folder or a .safetensors file.")
    if path.is_dir():
        sub = path / "transformer" if (path / "transformer" / "config.json").exists() else path
        if not (sub / "config.json").exists():
            raise DLAInputError(f"{path} has no config.json: pass a diffusers FluxTransformer2DModel folder.")
        return FluxTransformer2DModel.from_pretrained(sub, torch_dtype=dtype, local_files_only=True)
    if config is None:
        config_dict = flux_config_from_bfl_checkpoint(path)
    else:
        folder = (
            Path(config) / "transformer" if (Path(config) / "transformer" / "config.json").exists() else Path(config)
        )
        config_dict = json.loads((folder / "config.json").read_text())
    return _flux_from_bfl_file(path, config_dict, dtype)


def _flux_from_bfl_file(path: Path, config: dict, dtype: torch.dtype):
    """A diffusers FLUX transformer from a BFL-layout file, converted at any width (:func:`bfl_flux_to_diffusers`)."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    raw = load_file(str(path))
    prefix, _ = _strip_prefix({key: () for key in raw})
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    try:
        # raw.pop releases each source tensor once converted: the file's and the converted weights are never both whole
        state = bfl_flux_to_diffusers(
            {k[len(prefix) :]: raw.pop(k).to(dtype) for k in list(raw) if k.startswith(prefix)}
        )
        del raw
        model.load_state_dict(state, strict=True, assign=True)
    except (RuntimeError, KeyError) as exc:
        raise DLAInputError(f"{path.name} does not match a FLUX.1 transformer of its inferred size: {exc}") from exc
    return model.to(dtype).eval()


def load_flux_vae(path: str | Path, dtype: torch.dtype = torch.float32, config: str | Path | None = None):
    """Load a FLUX VAE from a diffusers folder or a single file (ComfyUI ``ae.safetensors`` layout).

    A single file gets FLUX.1's VAE config unless ``config`` names a folder with one.
    """
    from diffusers import AutoencoderKL

    path = Path(path)
    if not path.exists():
        raise DLAInputError(f"VAE not found: {path}. Pass a diffusers AutoencoderKL folder or a .safetensors file.")
    if path.is_dir():
        sub = path / "vae" if (path / "vae" / "config.json").exists() else path
        if not (sub / "config.json").exists():
            raise DLAInputError(f"{path} has no config.json: pass a diffusers AutoencoderKL folder.")
        return AutoencoderKL.from_pretrained(sub, torch_dtype=dtype, local_files_only=True)
    with tempfile.TemporaryDirectory() as tmp:
        if config is None:
            config = write_config_folder(tmp, FLUX_VAE_CONFIG, "AutoencoderKL")
        return AutoencoderKL.from_single_file(str(path), config=str(config), torch_dtype=dtype, local_files_only=True)
