"""Tiny random FLUX files in the layouts ComfyUI's own loaders read, built offline in seconds.

* :func:`build_tiny_flux_comfy`: a FLUX.1 transformer in Black Forest Labs' original key
  layout (``double_blocks.0.img_attn.qkv.weight`` ...), the layout of ``flux1-dev.safetensors``.
  ComfyUI's ``UNETLoader`` detects FLUX from the keys alone and fixes hidden size 3072,
  24 heads and the 4096-wide T5 slot, so only the depth can shrink: one double-stream and
  one single-stream block (~0.55B parameters, ~1.1 GB in bf16).
* :func:`build_tiny_flux_vae`: a random VAE in the layout of FLUX's ``ae.safetensors``
  (16 latent channels, 8x downsampling). ComfyUI's ``VAELoader`` fixes channel widths
  (128/256/512/512) and block counts for this layout, so it is full size (~84M parameters).
* :func:`build_tiny_flux2_vae`: FLUX.2's VAE (``flux2-vae.safetensors`` layout: 32-channel KL latent,
  batch-norm statistics, quant convs); full-size encoder, 32-wide decoder (~36M parameters).
* :func:`build_tiny_flux_lora`: a rank-``r`` LoRA on the attention and MLP projections of
  the tiny transformer, in the generic ``diffusion_model.<module>.lora_up/lora_down`` format
  that ``LoraLoaderModelOnly`` applies.

Weights are small seeded random values: outputs are finite, depend on every input, and
are reproducible for a given seed. Nothing here imports ComfyUI.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors import safe_open

from .files import write_safetensors

# Fixed by ComfyUI's FLUX detection (comfy/model_detection.py) and by FLUX.1 itself.
FLUX_HIDDEN = 3072
FLUX_HEADS = 24
FLUX_HEAD_DIM = FLUX_HIDDEN // FLUX_HEADS  # 128
FLUX_MLP = 4 * FLUX_HIDDEN
FLUX_CONTEXT_WIDTH = 4096  # the T5-XXL slot the DLA fills
FLUX_POOLED_WIDTH = 768  # the CLIP-L pooled slot
FLUX_LATENT_CHANNELS = 16
FLUX_PATCH = 2
FLUX_TIME_EMBED = 256

# FLUX's VAE (ae.safetensors) layout, fixed by ComfyUI's VAE detection.
VAE_BASE_CHANNELS = 128
VAE_CHANNEL_MULT = (1, 2, 4, 4)
VAE_RES_BLOCKS = 2
FLUX2_VAE_Z_CHANNELS = 32  # FLUX.2's VAE: 32 channels before the 2x2 patching (128 after)
FLUX2_TINY_DECODER_BASE = 32  # ComfyUI reads the decoder width from decoder.conv_in (GroupNorm: 32 groups)

# Modules the tiny LoRA adapts: attention and MLP projections of both block kinds.
LORA_TARGET_SUFFIXES = (
    "img_attn.qkv",
    "img_attn.proj",
    "txt_attn.qkv",
    "txt_attn.proj",
    "img_mlp.0",
    "img_mlp.2",
    "txt_mlp.0",
    "txt_mlp.2",
    "linear1",
    "linear2",
)


class _RandomWeights:
    """Seeded generator of weights that keep activations O(1) through a random network."""

    def __init__(self, seed: int, dtype: torch.dtype, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.dtype = dtype

    def normal(self, shape, std: float) -> torch.Tensor:
        out = torch.empty(shape, dtype=torch.float32, device=self.device)
        out.normal_(0.0, std, generator=self.generator)
        return out.to(self.dtype)

    def linear(self, state: dict, name: str, out_features: int, in_features: int, gain: float = 1.0, bias: bool = True):
        state[f"{name}.weight"] = self.normal((out_features, in_features), gain / math.sqrt(in_features))
        if bias:
            state[f"{name}.bias"] = self.normal((out_features,), 0.02)

    def conv(self, state: dict, name: str, out_channels: int, in_channels: int, kernel: int, gain: float = 1.0):
        fan_in = in_channels * kernel * kernel
        state[f"{name}.weight"] = self.normal((out_channels, in_channels, kernel, kernel), gain / math.sqrt(fan_in))
        state[f"{name}.bias"] = self.normal((out_channels,), 0.02)

    def ones(self, state: dict, name: str, size: int):
        state[name] = torch.ones(size, dtype=self.dtype, device=self.device)

    def group_norm(self, state: dict, name: str, channels: int):
        state[f"{name}.weight"] = torch.ones(channels, dtype=self.dtype, device=self.device)
        state[f"{name}.bias"] = torch.zeros(channels, dtype=self.dtype, device=self.device)


def tiny_flux_state_dict(
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    double_blocks: int = 1,
    single_blocks: int = 1,
    hidden: int = FLUX_HIDDEN,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """FLUX.1 transformer weights in BFL's key layout: ``double_blocks`` + ``single_blocks`` deep, random.

    ``hidden`` must be a multiple of the 128-wide head. ComfyUI 0.3.64 ignores the file's width
    and builds 3072 (so only the default loads there); newer ComfyUI derives width and head count
    from ``img_in``/``txt_in``, so e.g. 256 (2 heads) gives a FLUX of a few MB. ``device``: where the
    tensors are drawn (on a GPU, FLUX.1-dev's 12B parameters take a second; CPU values are unchanged).
    """
    if hidden % FLUX_HEAD_DIM:
        raise ValueError(f"hidden={hidden} is not a multiple of FLUX's head size {FLUX_HEAD_DIM}")
    rand = _RandomWeights(seed, dtype, device)
    state: dict[str, torch.Tensor] = {}
    mlp = 4 * hidden
    patch_features = FLUX_LATENT_CHANNELS * FLUX_PATCH * FLUX_PATCH  # 64
    # Modulation weights are small so each block's gated residual stays a perturbation.
    modulation_gain = 0.1

    rand.linear(state, "img_in", hidden, patch_features)
    rand.linear(state, "txt_in", hidden, FLUX_CONTEXT_WIDTH)
    for embedder, in_width in (
        ("time_in", FLUX_TIME_EMBED),
        ("vector_in", FLUX_POOLED_WIDTH),
        ("guidance_in", FLUX_TIME_EMBED),
    ):
        rand.linear(state, f"{embedder}.in_layer", hidden, in_width)
        rand.linear(state, f"{embedder}.out_layer", hidden, hidden)

    for index in range(double_blocks):
        block = f"double_blocks.{index}"
        for stream in ("img", "txt"):
            rand.linear(state, f"{block}.{stream}_mod.lin", 6 * hidden, hidden, gain=modulation_gain)
            rand.linear(state, f"{block}.{stream}_attn.qkv", 3 * hidden, hidden)
            rand.ones(state, f"{block}.{stream}_attn.norm.query_norm.scale", FLUX_HEAD_DIM)
            rand.ones(state, f"{block}.{stream}_attn.norm.key_norm.scale", FLUX_HEAD_DIM)
            rand.linear(state, f"{block}.{stream}_attn.proj", hidden, hidden)
            rand.linear(state, f"{block}.{stream}_mlp.0", mlp, hidden)
            rand.linear(state, f"{block}.{stream}_mlp.2", hidden, mlp)

    for index in range(single_blocks):
        block = f"single_blocks.{index}"
        rand.linear(state, f"{block}.linear1", 3 * hidden + mlp, hidden)
        rand.linear(state, f"{block}.linear2", hidden, hidden + mlp)
        rand.ones(state, f"{block}.norm.query_norm.scale", FLUX_HEAD_DIM)
        rand.ones(state, f"{block}.norm.key_norm.scale", FLUX_HEAD_DIM)
        rand.linear(state, f"{block}.modulation.lin", 3 * hidden, hidden, gain=modulation_gain)

    rand.linear(state, "final_layer.adaLN_modulation.1", 2 * hidden, hidden, gain=modulation_gain)
    rand.linear(state, "final_layer.linear", patch_features, hidden)
    return state


def build_tiny_flux_comfy(
    path: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16, hidden: int = FLUX_HIDDEN
) -> Path:
    """Write a random 1+1-block FLUX.1 transformer (BFL layout) that ComfyUI's ``UNETLoader`` loads as FLUX."""
    state = tiny_flux_state_dict(seed=seed, dtype=dtype, hidden=hidden)
    return write_safetensors(path, state, metadata={"format": "pt", "tiny_flux_seed": str(seed)})


def _vae_resnet(rand: _RandomWeights, state: dict, name: str, in_channels: int, out_channels: int):
    rand.group_norm(state, f"{name}.norm1", in_channels)
    rand.conv(state, f"{name}.conv1", out_channels, in_channels, 3)
    rand.group_norm(state, f"{name}.norm2", out_channels)
    # Small second conv: the block stays close to identity, so 20+ random blocks stay finite.
    rand.conv(state, f"{name}.conv2", out_channels, out_channels, 3, gain=0.2)
    if in_channels != out_channels:
        rand.conv(state, f"{name}.nin_shortcut", out_channels, in_channels, 1)


def _vae_mid(rand: _RandomWeights, state: dict, prefix: str, channels: int):
    _vae_resnet(rand, state, f"{prefix}.mid.block_1", channels, channels)
    rand.group_norm(state, f"{prefix}.mid.attn_1.norm", channels)
    for projection in ("q", "k", "v"):
        rand.conv(state, f"{prefix}.mid.attn_1.{projection}", channels, channels, 1)
    rand.conv(state, f"{prefix}.mid.attn_1.proj_out", channels, channels, 1, gain=0.2)
    _vae_resnet(rand, state, f"{prefix}.mid.block_2", channels, channels)


def tiny_flux_vae_state_dict(
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    latent_channels: int = FLUX_LATENT_CHANNELS,
    decoder_base: int = VAE_BASE_CHANNELS,
) -> dict[str, torch.Tensor]:
    """Random weights in the key layout of FLUX's ``ae.safetensors`` (encoder/decoder, 16 latent channels).

    ``latent_channels`` / ``decoder_base``: see :func:`tiny_flux2_vae_state_dict` (FLUX.2's VAE).
    """
    rand = _RandomWeights(seed, dtype)
    state: dict[str, torch.Tensor] = {}
    mult = VAE_CHANNEL_MULT
    base = VAE_BASE_CHANNELS
    levels = len(mult)

    rand.conv(state, "encoder.conv_in", base, 3, 3)
    block_in = base
    for level in range(levels):
        block_out = base * mult[level]
        for block in range(VAE_RES_BLOCKS):
            _vae_resnet(rand, state, f"encoder.down.{level}.block.{block}", block_in, block_out)
            block_in = block_out
        if level != levels - 1:
            rand.conv(state, f"encoder.down.{level}.downsample.conv", block_in, block_in, 3)
    _vae_mid(rand, state, "encoder", block_in)
    rand.group_norm(state, "encoder.norm_out", block_in)
    rand.conv(state, "encoder.conv_out", 2 * latent_channels, block_in, 3)  # mean and log-variance

    block_in = decoder_base * mult[-1]
    rand.conv(state, "decoder.conv_in", block_in, latent_channels, 3)
    _vae_mid(rand, state, "decoder", block_in)
    for level in reversed(range(levels)):
        block_out = decoder_base * mult[level]
        for block in range(VAE_RES_BLOCKS + 1):
            _vae_resnet(rand, state, f"decoder.up.{level}.block.{block}", block_in, block_out)
            block_in = block_out
        if level != 0:
            rand.conv(state, f"decoder.up.{level}.upsample.conv", block_in, block_in, 3)
    rand.group_norm(state, "decoder.norm_out", block_in)
    rand.conv(state, "decoder.conv_out", 3, block_in, 3)
    return state


def build_tiny_flux_vae(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write a random FLUX-architecture VAE (``ae.safetensors`` layout) that ComfyUI's ``VAELoader`` loads."""
    return write_safetensors(path, tiny_flux_vae_state_dict(seed=seed, dtype=dtype), metadata={"format": "pt"})


def tiny_flux2_vae_state_dict(seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Random weights in the layout of FLUX.2's ``flux2-vae.safetensors`` as ComfyUI's ``VAE`` detects it.

    ComfyUI (>= 0.3.72, comfy/sd.py) reads the generic KL layout with a ``bn.running_mean``: a
    32-channel latent, 2x2-patched and batch-normalised into FLUX.2's 128 channels (16x downsampling),
    with ``quant_conv`` / ``post_quant_conv``. It fixes the encoder's widths (128/256/512/512) but
    derives the decoder's from ``decoder.conv_in`` (what BFL's small-decoder file uses), so the
    decoder here is 32 wide at the base (~36M parameters in all, nearly all of them the encoder).
    """
    rand = _RandomWeights(seed + 1, dtype)
    state = tiny_flux_vae_state_dict(
        seed=seed, dtype=dtype, latent_channels=FLUX2_VAE_Z_CHANNELS, decoder_base=FLUX2_TINY_DECODER_BASE
    )
    z = FLUX2_VAE_Z_CHANNELS
    rand.conv(state, "quant_conv", 2 * z, 2 * z, 1)
    rand.conv(state, "post_quant_conv", z, z, 1)
    patched = 4 * z  # the 2x2 patches: FLUX.2's 128 latent channels
    state["bn.running_mean"] = rand.normal((patched,), 0.1).float()
    state["bn.running_var"] = (1.0 + rand.normal((patched,), 0.1).float().abs()).float()
    state["bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return state


def build_tiny_flux2_vae(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write :func:`tiny_flux2_vae_state_dict` (``flux2-vae.safetensors`` layout) for ComfyUI's ``VAELoader``."""
    return write_safetensors(path, tiny_flux2_vae_state_dict(seed=seed, dtype=dtype), metadata={"format": "pt"})


def build_tiny_flux_lora(
    path: str | Path, flux_path: str | Path, rank: int = 4, seed: int = 0, alpha: float | None = None
) -> Path:
    """Write a random rank-``rank`` LoRA for the FLUX file at ``flux_path`` (``diffusion_model.*.lora_up/down``).

    Both factors are random (not the usual zero ``up``), so applying the LoRA visibly changes
    the model's output, which is what a test of LoRA plumbing needs.
    """
    generator = torch.Generator().manual_seed(seed)
    alpha = float(rank) if alpha is None else float(alpha)
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(flux_path), framework="pt") as flux:
        for key in sorted(flux.keys()):
            if not key.endswith(".weight"):
                continue
            module = key[: -len(".weight")]
            if not module.endswith(LORA_TARGET_SUFFIXES):
                continue
            out_features, in_features = flux.get_slice(key).get_shape()
            name = f"diffusion_model.{module}"
            down = torch.randn((rank, in_features), generator=generator) / math.sqrt(in_features)
            up = torch.randn((out_features, rank), generator=generator) * (0.1 / math.sqrt(rank))
            state[f"{name}.lora_down.weight"] = down.to(torch.bfloat16)
            state[f"{name}.lora_up.weight"] = up.to(torch.bfloat16)
            state[f"{name}.alpha"] = torch.tensor(alpha)
    if not state:
        raise ValueError(
            f"'{flux_path}' has no FLUX attention/MLP weights to adapt; is it a FLUX transformer in BFL layout?"
        )
    return write_safetensors(path, state, metadata={"format": "pt", "rank": str(rank)})
