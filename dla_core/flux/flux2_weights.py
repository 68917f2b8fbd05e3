"""FLUX.2 weights: ComfyUI / BFL key layout -> diffusers ``Flux2Transformer2DModel``, configs, loaders.

ComfyUI's FLUX.2 (``comfy/ldm/flux/model.py`` with FLUX.2's parameters) has no biases, one global
modulation per stream and a fused single-block ``linear1`` whose split diffusers keeps as one
``to_qkv_mlp_proj``; so unlike FLUX.1 only the double blocks' ``qkv`` is split. The layout
(BFL -> diffusers): ``img_in``/``txt_in`` -> ``x_embedder``/``context_embedder``;
``time_in``/``guidance_in`` -> ``time_guidance_embed.{timestep,guidance}_embedder``;
``double_stream_modulation_{img,txt}.lin`` / ``single_stream_modulation.lin`` -> ``....linear``;
double blocks: ``img_attn.qkv`` -> ``attn.to_q/k/v``, ``txt_attn.qkv`` -> ``attn.add_{q,k,v}_proj``,
``img_attn.proj`` / ``txt_attn.proj`` -> ``attn.to_out.0`` / ``attn.to_add_out``,
``img_mlp.0/2`` / ``txt_mlp.0/2`` -> ``ff.linear_in/out`` / ``ff_context.linear_in/out``;
single blocks: ``linear1`` / ``linear2`` -> ``attn.to_qkv_mlp_proj`` / ``attn.to_out``; the final
adaLN's (shift, scale) halves are swapped to diffusers' (scale, shift). These are the same names
ComfyUI's LoRA loader maps for a diffusers-format FLUX.2 LoRA (``comfy.utils.flux_to_diffusers``),
so a LoRA the trainer writes in diffusers names lands on the right ComfyUI weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..errors import DLAInputError
from .flux2 import FLUX2_TRANSFORMER_CLASS, require_flux2_diffusers
from .weights import swap_halves

FLUX2_HEAD_DIM = 128  # sum of FLUX.2's four rope axes (4 x 32), as ComfyUI assumes
FLUX2_VAE_CLASS = "AutoencoderKLFlux2"

# LoRA targets for FLUX.2 (diffusers module names): the attention projections of the double blocks, as for
# FLUX.1, plus the single blocks' fused input (qkv + MLP) and output projections, which hold their attention.
FLUX2_ATTENTION_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "to_qkv_mlp_proj",
    "attn.to_out",
)

_EMBEDDERS = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2",
    "guidance_in.in_layer": "time_guidance_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_guidance_embed.guidance_embedder.linear_2",
    "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
    "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
    "single_stream_modulation.lin": "single_stream_modulation.linear",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}
_DOUBLE = {
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
    "img_mlp.0": "ff.linear_in",
    "img_mlp.2": "ff.linear_out",
    "txt_mlp.0": "ff_context.linear_in",
    "txt_mlp.2": "ff_context.linear_out",
}
_SINGLE = {
    "linear1": "attn.to_qkv_mlp_proj",
    "linear2": "attn.to_out",
    "norm.query_norm": "attn.norm_q",
    "norm.key_norm": "attn.norm_k",
}
_FINAL_ADALN = "final_layer.adaLN_modulation.1"


def _flux2_targets(module: str, hidden: int) -> list[tuple[str, int, int | None]]:
    """Where BFL module ``module``'s output rows go: ``[(diffusers module, first row, end row or None), ...]``."""
    if module in _EMBEDDERS:
        return [(_EMBEDDERS[module], 0, None)]
    kind, _, rest = module.partition(".")
    index, _, inner = rest.partition(".")
    if kind == "double_blocks":
        block = f"transformer_blocks.{index}"
        if inner in _DOUBLE:
            return [(f"{block}.{_DOUBLE[inner]}", 0, None)]
        if inner in ("img_attn.qkv", "txt_attn.qkv"):
            names = ("to_q", "to_k", "to_v") if inner.startswith("img") else ("add_q_proj", "add_k_proj", "add_v_proj")
            return [(f"{block}.attn.{name}", i * hidden, (i + 1) * hidden) for i, name in enumerate(names)]
    elif kind == "single_blocks" and inner in _SINGLE:
        return [(f"single_transformer_blocks.{index}.{_SINGLE[inner]}", 0, None)]
    raise KeyError(f"unknown FLUX.2 module '{module}'")


def bfl_flux2_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a FLUX.2 state dict in ComfyUI / BFL key layout (no prefix) to diffusers' key layout."""
    hidden = state["img_in.weight"].shape[0]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        if param == "scale":  # RMSNorm scales are 'weight' in diffusers
            param = "weight"
        if module == _FINAL_ADALN:
            tensor = swap_halves(tensor)
        for target, start, end in _flux2_targets(module, hidden):
            out[f"{target}.{param}"] = tensor[start:end] if end is not None else tensor
    return out


def is_flux2_state(keys) -> bool:
    """Whether ComfyUI-layout keys are FLUX.2's (global modulation), as ComfyUI's model detection tells."""
    return any(key.endswith("double_stream_modulation_img.lin.weight") for key in keys)


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}


def _prefix(keys) -> str:
    for key in keys:
        if key.endswith("img_in.weight"):
            return key[: -len("img_in.weight")]
    raise DLAInputError("not a FLUX.2 transformer checkpoint (no 'img_in.weight').")


def _count(keys, prefix: str) -> int:
    found = {int(k[len(prefix) :].split(".")[0]) for k in keys if k.startswith(prefix)}
    return max(found) + 1 if found else 0


def flux2_config_from_bfl_checkpoint(path: str | Path) -> dict:
    """The diffusers ``Flux2Transformer2DModel`` config of a ComfyUI-layout FLUX.2 file, read from its shapes."""
    shapes = _shapes(Path(path))
    prefix = _prefix(shapes)
    shapes = {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}
    if not is_flux2_state(shapes):
        raise DLAInputError(f"{Path(path).name} is not a FLUX.2 transformer (no global modulation weights).")
    hidden, in_channels = shapes["img_in.weight"]
    mlp_in = shapes["double_blocks.0.img_mlp.0.weight"][0] if "double_blocks.0.img_mlp.0.weight" in shapes else None
    return {
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": None,
        "num_layers": _count(shapes, "double_blocks."),
        "num_single_layers": _count(shapes, "single_blocks."),
        "attention_head_dim": FLUX2_HEAD_DIM,
        "num_attention_heads": hidden // FLUX2_HEAD_DIM,
        "joint_attention_dim": shapes["txt_in.weight"][1],
        "timestep_guidance_channels": shapes["time_in.in_layer.weight"][1],
        "mlp_ratio": (mlp_in / 2 / hidden) if mlp_in else 3.0,
        "axes_dims_rope": [32, 32, 32, 32],
        "rope_theta": 2000,
        "eps": 1e-6,
        "guidance_embeds": "guidance_in.in_layer.weight" in shapes,
    }


def read_transformer_config(path: str | Path) -> dict | None:
    """The diffusers config of a transformer folder (``config.json`` or ``transformer/config.json``), or of a
    single FLUX file (``_class_name`` from its keys); None when ``path`` holds neither. Loads no weights."""
    path = Path(path)
    if path.is_dir():
        for file in (path / "transformer" / "config.json", path / "config.json"):
            if file.is_file():
                return json.loads(file.read_text())
        return None
    if path.is_file() and path.suffix == ".safetensors":
        keys = _shapes(path)
        if is_flux2_state(keys):
            return {"_class_name": FLUX2_TRANSFORMER_CLASS, **flux2_config_from_bfl_checkpoint(path)}
        from .weights import flux_config_from_bfl_checkpoint

        return {"_class_name": "FluxTransformer2DModel", **flux_config_from_bfl_checkpoint(path)}
    return None


def match_comfyui_numerics(transformer) -> None:
    """Give the attention's QK RMSNorms ComfyUI's epsilon (torch's default, ``finfo(dtype).eps``; diffusers: 1e-6).

    The only numerical difference between the two FLUX.2 implementations: with it the trainer's and the standalone
    pipeline's FLUX.2 compute what ComfyUI's does (to float32 rounding), so what is trained is what ComfyUI runs.
    """
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.RMSNorm) and name.rsplit(".", 1)[-1] in QK_NORMS:
            module.eps = None


QK_NORMS = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")


def is_flux2_transformer(path: str | Path) -> bool:
    """Whether a transformer folder or file holds FLUX.2 (its config's class, or a single file's keys)."""
    config = read_transformer_config(path)
    return bool(config) and config.get("_class_name") == FLUX2_TRANSFORMER_CLASS


def load_flux2_transformer(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a FLUX.2 transformer from a diffusers folder or a ComfyUI-layout ``.safetensors`` file (offline).

    Its QK norms get ComfyUI's epsilon (:func:`match_comfyui_numerics`).
    """
    model = _load_flux2_transformer(path, dtype)
    match_comfyui_numerics(model)
    return model


def _load_flux2_transformer(path: str | Path, dtype: torch.dtype):
    require_flux2_diffusers()
    from diffusers import Flux2Transformer2DModel

    path = Path(path)
    if not path.exists():
        raise DLAInputError(f"FLUX.2 transformer not found: {path}. Pass a diffusers folder or a .safetensors file.")
    if path.is_dir():
        sub = path / "transformer" if (path / "transformer" / "config.json").exists() else path
        if not (sub / "config.json").exists():
            raise DLAInputError(f"{path} has no config.json: pass a diffusers Flux2Transformer2DModel folder.")
        return Flux2Transformer2DModel.from_pretrained(sub, torch_dtype=dtype, local_files_only=True)
    from accelerate import init_empty_weights

    config = flux2_config_from_bfl_checkpoint(path)
    raw = load_file(str(path))
    prefix = _prefix(raw)
    with init_empty_weights():
        model = Flux2Transformer2DModel.from_config(config)
    try:
        state = bfl_flux2_to_diffusers(
            {k[len(prefix) :]: raw.pop(k).to(dtype) for k in list(raw) if k.startswith(prefix)}
        )
        del raw
        model.load_state_dict(state, strict=True, assign=True)
    except (RuntimeError, KeyError) as exc:
        raise DLAInputError(f"{path.name} does not match a FLUX.2 transformer of its inferred size: {exc}") from exc
    return model.eval()  # weights already in ``dtype`` (assigned); FLUX.2 has no buffers to cast


def is_flux2_vae_folder(path: str | Path) -> bool:
    """Whether ``path`` is a diffusers ``AutoencoderKLFlux2`` folder (FLUX.2's VAE)."""
    path = Path(path)
    for file in (path / "vae" / "config.json", path / "config.json"):
        if file.is_file():
            return json.loads(file.read_text()).get("_class_name") == FLUX2_VAE_CLASS
    return False


def load_flux2_vae(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load FLUX.2's VAE: a diffusers ``AutoencoderKLFlux2`` folder, or ComfyUI's ``flux2-vae.safetensors`` layout
    (the generic KL layout + ``quant_conv`` / ``post_quant_conv`` + ``bn.*``; widths read from the file, as
    ComfyUI does for BFL's small-decoder file). Offline."""
    require_flux2_diffusers()
    from diffusers import AutoencoderKLFlux2

    path = Path(path)
    if path.is_file():
        return _flux2_vae_from_file(path, dtype)
    sub = path / "vae" if (path / "vae" / "config.json").exists() else path
    if not (sub / "config.json").exists():
        raise DLAInputError(
            f"{path} has no config.json: pass a diffusers AutoencoderKLFlux2 folder or flux2-vae.safetensors."
        )
    return AutoencoderKLFlux2.from_pretrained(sub, torch_dtype=dtype, local_files_only=True)


def _flux2_vae_from_file(path: Path, dtype: torch.dtype):
    from diffusers import AutoencoderKLFlux2
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = load_file(str(path))
    if "bn.running_mean" not in state or "encoder.conv_in.weight" not in state:
        raise DLAInputError(f"{path.name} is not FLUX.2's VAE (no bn.running_mean / encoder.conv_in).")
    levels = _count(state, "encoder.down.")
    encoder = tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(levels))
    decoder = tuple(state[f"decoder.up.{i}.block.0.conv1.weight"].shape[0] for i in range(levels))
    vae = AutoencoderKLFlux2(
        block_out_channels=encoder,
        decoder_block_out_channels=decoder,
        layers_per_block=_count(state, "encoder.down.0.block."),
        latent_channels=state["post_quant_conv.weight"].shape[0],
    )
    converted = convert_ldm_vae_checkpoint(state, vae.config)
    for key in state:
        if key.startswith(("quant_conv.", "post_quant_conv.", "bn.")):
            converted[key] = state[key]
    try:
        vae.load_state_dict(converted, strict=True)
    except RuntimeError as exc:
        raise DLAInputError(f"{path.name} does not match FLUX.2's VAE layout: {exc}") from exc
    return vae.to(dtype).eval()
