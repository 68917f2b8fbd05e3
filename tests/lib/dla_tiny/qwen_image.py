"""Tiny random Qwen-Image-format files for ComfyUI's own loaders, built offline.

* :func:`build_tiny_qwen_image_dit`: a Qwen-Image DiT in the key layout of
  ``qwen_image_edit_2509_fp8_e4m3fn.safetensors`` (``transformer_blocks.0.attn.to_q.weight``,
  ``txt_norm.weight`` ...). ComfyUI's ``UNETLoader`` reads only the depth and the input
  channels from the keys; width 3072, 24 heads and the 3584-wide text slot are fixed, so
  the smallest detectable model is one block (~0.39B parameters).
* :func:`build_tiny_qwen25vl_te`: a Qwen2.5-VL text encoder (language model + vision tower)
  in the layout of ``qwen_2.5_vl_7b_fp8_scaled.safetensors`` (``model.layers.0...``,
  ``visual.blocks.0...``), which ``CLIPLoader`` type ``qwen_image`` detects as Qwen2.5-VL-7B
  from ``model.layers.0.self_attn.k_proj.bias`` being 512 wide (4 KV heads x 128).

* :func:`build_tiny_qwen_image_vae`: Qwen-Image's VAE (``qwen_image_vae.safetensors``, the
  Wan 2.1 causal 3D VAE layout ``VAELoader`` detects). ComfyUI fixes its config, so it is full
  size (~127M parameters) with random weights.

ComfyUI fixes the text encoder's config (3584 wide, 28 layers, vocabulary 152064: 7B
parameters) whatever the file holds; the only way to a smaller language model is the
``model_options`` entry :data:`COMFY_TE_MODEL_OPTIONS_KEY` = :data:`TINY_TE_CONFIG`, which
``comfy.sd.load_clip(..., model_options=...)`` honours but the ``CLIPLoader`` node does not
pass. The vision tower has no override at all (1280 wide, 32 blocks, ~0.63B parameters), so
the tiny file keeps it full size (bf16, ~1.3 GB; all but two blocks are exact identities).

Weights are small seeded random values. Nothing here imports ComfyUI.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .files import write_safetensors

# --- text encoder -------------------------------------------------------------------------
COMFY_TE_MODEL_OPTIONS_KEY = "qwen25_7b_model_config"
# head_dim is fixed at 128 by ComfyUI; 4 KV heads make the 512-wide k_proj bias detection needs.
TINY_TE_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}
# The smallest text encoder whose output fits the Qwen-Image DiT's fixed 3584-wide text slot:
# what a Qwen-Image workflow run on tiny models needs (one decoder layer; the 152064 x 3584
# embedding alone is 0.55B parameters).
DIT_READY_TE_CONFIG = {
    "hidden_size": 3584,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}
TE_VOCAB = 152064
TE_HEAD_DIM = 128
# Vision tower, fixed by ComfyUI's Qwen25_7BVLI.
VISION_WIDTH = 1280
VISION_BLOCKS = 32
VISION_MLP = 3420
VISION_PATCH = 14
VISION_TEMPORAL_PATCH = 2
VISION_MERGE = 2
VISION_RANDOM_BLOCKS = (0, 7)  # block 7 is one of the tower's full-attention blocks

# --- DiT ----------------------------------------------------------------------------------
DIT_WIDTH = 3072  # 24 heads x 128
DIT_CONTEXT_WIDTH = 3584
DIT_LATENT_CHANNELS = 16
DIT_PATCH = 2
DIT_TIME_EMBED = 256


class _Random:
    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def normal(self, shape, std: float) -> torch.Tensor:
        out = torch.empty(shape, dtype=torch.float32)
        return out.normal_(0.0, std, generator=self.generator)


def tiny_qwen25vl_te_state_dict(
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    fp8_scaled: bool = False,
    vision: bool = True,
    config: dict | None = None,
    model_dtype: torch.dtype = torch.float32,
    vision_random_blocks: tuple[int, ...] = VISION_RANDOM_BLOCKS,
) -> dict[str, torch.Tensor]:
    """State dict of a tiny Qwen2.5-VL text encoder in ComfyUI's ``qwen_image`` layout.

    Weights are stored in ``dtype``; ``model.norm.weight`` is stored in ``model_dtype``, which
    is the dtype ComfyUI builds the encoder in (float32 keeps CPU tests fast: bfloat16 matmuls
    are slow on most CPUs). ``fp8_scaled`` stores every linear weight as float8_e4m3fn with a
    ``scale_weight`` and the ``scaled_fp8`` marker, like the fp8 files people download.
    ``vision=False`` leaves the vision tower out (a text-only Qwen2.5 file). Vision blocks not
    in ``vision_random_blocks`` get zero output projections, i.e. they are exact identities:
    the full-size tower ComfyUI insists on then costs seconds, not minutes, to build.
    """
    cfg = {**TINY_TE_CONFIG, **(config or {})}
    rand = _Random(seed)
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    state: dict[str, torch.Tensor] = {}
    linear_keys: list[str] = []

    def linear(name: str, out_f: int, in_f: int, bias: bool, std: float | None = None) -> None:
        std = std if std is not None else in_f**-0.5
        state[f"{name}.weight"] = rand.normal((out_f, in_f), std) if std else torch.zeros(out_f, in_f)
        linear_keys.append(name)
        if bias:
            state[f"{name}.bias"] = rand.normal((out_f,), 0.02) if std else torch.zeros(out_f)

    state["model.embed_tokens.weight"] = rand.normal((TE_VOCAB, hidden), 1.0)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        linear(f"{p}.self_attn.q_proj", heads * TE_HEAD_DIM, hidden, True)
        linear(f"{p}.self_attn.k_proj", kv_heads * TE_HEAD_DIM, hidden, True)
        linear(f"{p}.self_attn.v_proj", kv_heads * TE_HEAD_DIM, hidden, True)
        linear(f"{p}.self_attn.o_proj", hidden, heads * TE_HEAD_DIM, False)
        linear(f"{p}.mlp.gate_proj", inter, hidden, False)
        linear(f"{p}.mlp.up_proj", inter, hidden, False)
        linear(f"{p}.mlp.down_proj", hidden, inter, False)
        state[f"{p}.input_layernorm.weight"] = torch.ones(hidden)
        state[f"{p}.post_attention_layernorm.weight"] = torch.ones(hidden)
    state["model.norm.weight"] = torch.ones(hidden)

    if vision:
        state["visual.patch_embed.proj.weight"] = rand.normal(
            (VISION_WIDTH, 3, VISION_TEMPORAL_PATCH, VISION_PATCH, VISION_PATCH), 0.02
        )
        # Small residual updates keep 32 random blocks from blowing the stream up.
        for i in range(VISION_BLOCKS):
            p = f"visual.blocks.{i}"
            state[f"{p}.norm1.weight"] = torch.ones(VISION_WIDTH)
            state[f"{p}.norm2.weight"] = torch.ones(VISION_WIDTH)
            std = 1.0 if i in vision_random_blocks else 0.0  # 0: the block is an identity
            linear(f"{p}.attn.qkv", 3 * VISION_WIDTH, VISION_WIDTH, True, 0.02 * std)
            linear(f"{p}.attn.proj", VISION_WIDTH, VISION_WIDTH, True, 0.005 * std)
            linear(f"{p}.mlp.gate_proj", VISION_MLP, VISION_WIDTH, True, 0.02 * std)
            linear(f"{p}.mlp.up_proj", VISION_MLP, VISION_WIDTH, True, 0.02 * std)
            linear(f"{p}.mlp.down_proj", VISION_WIDTH, VISION_MLP, True, 0.005 * std)
        merged = VISION_WIDTH * VISION_MERGE**2
        state["visual.merger.ln_q.weight"] = torch.ones(VISION_WIDTH)
        linear("visual.merger.mlp.0", merged, merged, True, merged**-0.5)
        linear("visual.merger.mlp.2", hidden, merged, True, merged**-0.5)

    out: dict[str, torch.Tensor] = {}
    linear_weights = {f"{name}.weight" for name in linear_keys}
    for key, value in state.items():
        if fp8_scaled and key in linear_weights:
            scale = value.abs().max().clamp_min(1e-8) / 448.0  # e4m3fn's largest normal value
            out[key] = (value / scale).to(torch.float8_e4m3fn)
            out[key[: -len(".weight")] + ".scale_weight"] = scale.reshape(()).to(torch.float32)
        else:
            out[key] = value.to(model_dtype if key == "model.norm.weight" else dtype)
    if fp8_scaled:
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def build_tiny_qwen25vl_te(
    path: str | Path,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    fp8_scaled: bool = False,
    vision: bool = True,
    model_dtype: torch.dtype = torch.float32,
    config: dict | None = None,
) -> Path:
    """Write :func:`tiny_qwen25vl_te_state_dict` to ``path`` (a ``.safetensors`` file).

    ``config`` overrides :data:`TINY_TE_CONFIG` (e.g. :data:`DIT_READY_TE_CONFIG`); load the
    file with the same config under :data:`COMFY_TE_MODEL_OPTIONS_KEY`.
    """
    return write_safetensors(
        path, tiny_qwen25vl_te_state_dict(seed, dtype, fp8_scaled, vision, config=config, model_dtype=model_dtype)
    )


def tiny_qwen_image_dit_state_dict(
    seed: int = 0, dtype: torch.dtype = torch.bfloat16, num_blocks: int = 1
) -> dict[str, torch.Tensor]:
    """State dict of a Qwen-Image DiT with ``num_blocks`` blocks, in ComfyUI's key layout."""
    rand = _Random(seed)
    state: dict[str, torch.Tensor] = {}
    w = DIT_WIDTH

    def linear(name: str, out_f: int, in_f: int, std: float | None = None) -> None:
        state[f"{name}.weight"] = rand.normal((out_f, in_f), std if std is not None else in_f**-0.5)
        state[f"{name}.bias"] = rand.normal((out_f,), 0.02)

    linear("time_text_embed.timestep_embedder.linear_1", w, DIT_TIME_EMBED)
    linear("time_text_embed.timestep_embedder.linear_2", w, w)
    state["txt_norm.weight"] = torch.ones(DIT_CONTEXT_WIDTH)
    linear("img_in", w, DIT_LATENT_CHANNELS * DIT_PATCH**2)
    linear("txt_in", w, DIT_CONTEXT_WIDTH)
    for i in range(num_blocks):
        p = f"transformer_blocks.{i}"
        for stream in ("img", "txt"):
            linear(f"{p}.{stream}_mod.1", 6 * w, w, 0.02 * w**-0.5)
            linear(f"{p}.{stream}_mlp.net.0.proj", 4 * w, w)
            linear(f"{p}.{stream}_mlp.net.2", w, 4 * w, 0.5 * (4 * w) ** -0.5)
        for norm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            state[f"{p}.attn.{norm}.weight"] = torch.ones(128)
        for proj in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            linear(f"{p}.attn.{proj}", w, w)
        linear(f"{p}.attn.to_out.0", w, w, 0.5 * w**-0.5)
        linear(f"{p}.attn.to_add_out", w, w, 0.5 * w**-0.5)
    linear("norm_out.linear", 2 * w, w, 0.02 * w**-0.5)
    linear("proj_out", DIT_LATENT_CHANNELS * DIT_PATCH**2, w)
    return {k: v.to(dtype) for k, v in state.items()}


def build_tiny_qwen_image_dit(
    path: str | Path,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    num_blocks: int = 1,
    index_timestep_zero: bool = False,
) -> Path:
    """Write :func:`tiny_qwen_image_dit_state_dict` to ``path``; ``UNETLoader`` detects it as Qwen-Image.

    ``index_timestep_zero``: add the empty ``__index_timestep_zero__`` marker of Qwen-Image-Edit-2511's
    file, from which newer ComfyUI sets the model's own reference method to ``index_timestep_zero``.
    """
    state = tiny_qwen_image_dit_state_dict(seed, dtype, num_blocks)
    if index_timestep_zero:
        state["__index_timestep_zero__"] = torch.zeros(0, dtype=dtype)
    return write_safetensors(path, state)


# --- VAE (qwen_image_vae.safetensors = Wan 2.1 VAE layout) ---------------------------------
# ComfyUI's VAELoader detects this layout from ``decoder.middle.0.residual.0.gamma`` and
# builds it with a fixed config (base width 96, widths x1/x2/x4/x4, 2 residual blocks per
# level), so the smallest file it loads is full size: ~127M parameters (~254 MB in bf16).
VAE_DIM = 96
VAE_DIM_MULT = (1, 2, 4, 4)
VAE_RES_BLOCKS = 2
VAE_TEMPORAL_DOWNSAMPLE = (False, True, True)
VAE_Z_DIM = 16


def tiny_qwen_image_vae_state_dict(seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """State dict of a random Qwen-Image VAE (Wan 2.1 causal 3D VAE) in ComfyUI's key layout.

    Residual branches are scaled down so the random network keeps activations O(1) and its
    decoded images are finite, non-constant and depend on the latent.
    """
    rand = _Random(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, out_c: int, in_c: int, kernel: tuple[int, ...], gain: float = 1.0) -> None:
        fan_in = in_c
        for k in kernel:
            fan_in *= k
        state[f"{name}.weight"] = rand.normal((out_c, in_c, *kernel), gain * fan_in**-0.5)
        state[f"{name}.bias"] = torch.zeros(out_c)

    def rms_gamma(name: str, channels: int, dims: int = 3) -> None:
        state[f"{name}.gamma"] = torch.ones((channels,) + (1,) * dims)

    def residual(name: str, in_c: int, out_c: int) -> None:
        rms_gamma(f"{name}.residual.0", in_c)
        conv(f"{name}.residual.2", out_c, in_c, (3, 3, 3))
        rms_gamma(f"{name}.residual.3", out_c)
        conv(f"{name}.residual.6", out_c, out_c, (3, 3, 3), gain=0.2)
        if in_c != out_c:
            conv(f"{name}.shortcut", out_c, in_c, (1, 1, 1))

    def attention(name: str, channels: int) -> None:
        rms_gamma(f"{name}.norm", channels, dims=2)
        conv(f"{name}.to_qkv", 3 * channels, channels, (1, 1))
        conv(f"{name}.proj", channels, channels, (1, 1), gain=0.2)

    def middle(prefix: str, channels: int) -> None:
        residual(f"{prefix}.middle.0", channels, channels)
        attention(f"{prefix}.middle.1", channels)
        residual(f"{prefix}.middle.2", channels, channels)

    # Encoder: per level, residual blocks then a (2D or 2D+temporal) downsample, except the last level.
    dims = [VAE_DIM * m for m in (1,) + VAE_DIM_MULT]
    conv("encoder.conv1", dims[0], 3, (3, 3, 3))
    index = 0
    for level, (in_c, out_c) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(VAE_RES_BLOCKS):
            residual(f"encoder.downsamples.{index}", in_c, out_c)
            in_c = out_c
            index += 1
        if level != len(VAE_DIM_MULT) - 1:
            conv(f"encoder.downsamples.{index}.resample.1", out_c, out_c, (3, 3))
            if VAE_TEMPORAL_DOWNSAMPLE[level]:
                conv(f"encoder.downsamples.{index}.time_conv", out_c, out_c, (3, 1, 1))
            index += 1
    middle("encoder", dims[-1])
    rms_gamma("encoder.head.0", dims[-1])
    conv("encoder.head.2", 2 * VAE_Z_DIM, dims[-1], (3, 3, 3))
    conv("conv1", 2 * VAE_Z_DIM, 2 * VAE_Z_DIM, (1, 1, 1))
    conv("conv2", VAE_Z_DIM, VAE_Z_DIM, (1, 1, 1))

    # Decoder: mirror image; levels after the first take half the channels an upsample left them.
    dims = [VAE_DIM * m for m in (VAE_DIM_MULT[-1],) + VAE_DIM_MULT[::-1]]
    temporal_upsample = VAE_TEMPORAL_DOWNSAMPLE[::-1]
    conv("decoder.conv1", dims[0], VAE_Z_DIM, (3, 3, 3))
    middle("decoder", dims[0])
    index = 0
    for level, (in_c, out_c) in enumerate(zip(dims[:-1], dims[1:])):
        if level in (1, 2, 3):
            in_c //= 2
        for _ in range(VAE_RES_BLOCKS + 1):
            residual(f"decoder.upsamples.{index}", in_c, out_c)
            in_c = out_c
            index += 1
        if level != len(VAE_DIM_MULT) - 1:
            conv(f"decoder.upsamples.{index}.resample.1", out_c // 2, out_c, (3, 3))
            if temporal_upsample[level]:
                conv(f"decoder.upsamples.{index}.time_conv", out_c * 2, out_c, (3, 1, 1))
            index += 1
    rms_gamma("decoder.head.0", dims[-1])
    conv("decoder.head.2", 3, dims[-1], (3, 3, 3))
    return {k: v.to(dtype) for k, v in state.items()}


def build_tiny_qwen_image_vae(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write :func:`tiny_qwen_image_vae_state_dict` to ``path``.

    ``VAELoader`` detects it as Qwen-Image's (Wan 2.1) VAE.
    """
    return write_safetensors(path, tiny_qwen_image_vae_state_dict(seed, dtype))
