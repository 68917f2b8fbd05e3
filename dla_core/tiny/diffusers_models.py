"""Tiny diffusers FLUX transformer and VAE, built in code; loaders for FLUX checkpoints.

- :func:`build_tiny_diffusers_flux` / :func:`build_tiny_diffusers_vae` write small random
  ``FluxTransformer2DModel`` / ``AutoencoderKL`` folders (diffusers format, config.json +
  safetensors). They keep FLUX's interfaces (16 latent channels, 8x VAE downscale, 2x2
  patches, 4096-wide context, 768 pooled, guidance embedding, latent scale/shift
  0.3611/0.1159) and shrink everything else, so a whole pipeline runs on a CPU in seconds.
- :func:`load_flux_transformer` / :func:`load_flux_vae` open a diffusers folder or a
  single-file checkpoint (BFL / ComfyUI key layout, as ComfyUI's ``UNETLoader`` /
  ``VAELoader`` read it) with a config inferred from the weights and written to a local
  folder, so ``from_single_file`` never touches the network.
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import torch

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

# A FLUX-shaped transformer small enough for a CPU test: head dim 16 = rope axes 4+6+6.
TINY_FLUX_TRANSFORMER_CONFIG = {
    **FLUX_DEV_TRANSFORMER_CONFIG,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "axes_dims_rope": [4, 6, 6],
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

# Same interface (8x downscale, 16 channels, scale/shift), a few thousand parameters.
TINY_FLUX_VAE_CONFIG = {
    **FLUX_VAE_CONFIG,
    "block_out_channels": [8, 8, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 64,
}


def _randomize(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """Deterministic small random weights (diffusers zero-inits some output layers)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            if name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
            elif "norm" in name and param.ndim == 1:
                param.copy_(1.0 + torch.randn(param.shape, generator=generator) * 0.01)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def build_tiny_diffusers_flux(folder: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a tiny random diffusers ``FluxTransformer2DModel`` folder and return its path.

    ``overrides`` change config entries (e.g. ``num_layers=2``).
    """
    from diffusers import FluxTransformer2DModel

    folder = Path(folder)
    config = {**TINY_FLUX_TRANSFORMER_CONFIG, **overrides}
    model = FluxTransformer2DModel(**config)
    _randomize(model, seed)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_diffusers_vae(folder: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a tiny random diffusers ``AutoencoderKL`` folder (FLUX latent interface)."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    config = {**TINY_FLUX_VAE_CONFIG, **overrides}
    model = AutoencoderKL(**config)
    _randomize(model, seed, std=0.1)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


# ----------------------------------------------------------------------------- loading


def _safetensors_keys_and_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

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
            return prefix, {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    raise DLAInputError("not a FLUX transformer checkpoint (no 'img_in.weight'): pass a FLUX.1 file or diffusers folder.")


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
        folder = Path(config) / "transformer" if (Path(config) / "transformer" / "config.json").exists() else Path(config)
        config_dict = json.loads((folder / "config.json").read_text())
    return _flux_from_bfl_file(path, config_dict, dtype)


def _flux_from_bfl_file(path: Path, config: dict, dtype: torch.dtype):
    """A diffusers FLUX transformer from a BFL-layout file, converted at any width (see dla_core.flux_checkpoint)."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file

    from ..flux_checkpoint import bfl_flux_to_diffusers

    raw = load_file(str(path))
    prefix, _ = _strip_prefix({key: () for key in raw})
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    try:
        state = bfl_flux_to_diffusers({k[len(prefix):]: v.to(dtype) for k, v in raw.items() if k.startswith(prefix)})
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
