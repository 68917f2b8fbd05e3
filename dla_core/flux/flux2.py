"""FLUX.2 ([dev], [klein] 4B / 9B) on the diffusers side: token layout and the one velocity call.

The rules reproduce what ComfyUI's FLUX.2 does with a conditioning and ``reference_latents``
(``comfy/ldm/flux/model.py`` with FLUX.2's parameters, ``comfy/model_base.py`` ``Flux2``), so a
diffusers ``Flux2Transformer2DModel`` driven by this module sees exactly the token sequence a
ComfyUI FLUX.2 sees:

- latents are FLUX.2's 128-channel model-space latents (the VAE's 2x2 patchified, batch-normed
  32 channels); one latent pixel is one token (patch size 1);
- position ids have four axes ``(t, row, column, l)``: the target image at ``t = 0``; reference
  ``i`` (from 0) at ``t = 10 * (i + 1)`` (ComfyUI's ``ref_index_scale`` 10 with its default
  ``index`` method; diffusers' ``_prepare_image_ids(scale=10)``), rows and columns from 0;
- the text sequence is padded to :data:`FLUX2_TEXT_TOKENS` (512) tokens with zeros *in front*
  and no mask (``model_base.Flux2.extra_conds``); text ids are 0 except ``l = 0 .. L-1``.
  Longer sequences are not padded. (diffusers' pipelines also take 512 unmasked tokens, but pad
  at the end with the pad tokens' encoder states; the DLA's conditioning runs in ComfyUI, so
  training follows ComfyUI.)
- no pooled vector; the distilled guidance only where the transformer has a guidance embedding
  ([dev]); [klein] has none.

Needs diffusers >= :data:`FLUX2_MIN_DIFFUSERS` (``Flux2Transformer2DModel`` with ``guidance_embeds``);
:func:`require_flux2_diffusers` says so before anything loads.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import DLAInputError

FLUX2_TEXT_TOKENS = 512  # ComfyUI's model_base.Flux2 pads the context to this many tokens (zeros in front)
FLUX2_REF_INDEX_SCALE = 10  # reference i (from 0) sits at t = 10 * (i + 1)
FLUX2_ID_AXES = 4  # (t, row, column, l)
FLUX2_REFERENCE_METHODS = ("index",)  # ComfyUI's FLUX.2 default; the one training supports
FLUX2_DEV_GUIDANCE = 4.0  # diffusers' Flux2Pipeline default for [dev]
FLUX2_MIN_DIFFUSERS = "0.37"  # Flux2Transformer2DModel(guidance_embeds=False) for [klein]
FLUX2_TRANSFORMER_CLASS = "Flux2Transformer2DModel"


def flux2_diffusers_problem() -> str | None:
    """Why this environment cannot run FLUX.2 in diffusers, or None. Imports diffusers' version only."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        installed = version("diffusers")
    except PackageNotFoundError:
        installed = None
    if installed is None:
        return (
            f"FLUX.2 training and the standalone FLUX.2 pipeline need diffusers >= {FLUX2_MIN_DIFFUSERS} "
            f"(Flux2Transformer2DModel), which is not installed: pip install 'diffusers>={FLUX2_MIN_DIFFUSERS}'."
        )
    from packaging.version import Version

    if Version(installed) < Version(FLUX2_MIN_DIFFUSERS):
        return (
            f"FLUX.2 training and the standalone FLUX.2 pipeline need diffusers >= {FLUX2_MIN_DIFFUSERS} "
            f"(Flux2Transformer2DModel with [klein]'s guidance-free config); this environment has diffusers "
            f"{installed}: pip install -U 'diffusers>={FLUX2_MIN_DIFFUSERS}'. FLUX.1 keeps working with {installed}."
        )
    return None


def require_flux2_diffusers() -> None:
    """Raise :class:`DLAInputError` naming the diffusers version FLUX.2 needs (before any model loads)."""
    problem = flux2_diffusers_problem()
    if problem:
        raise DLAInputError(problem)


def pack_flux2_latents(latents: torch.Tensor) -> torch.Tensor:
    """[batch, 128, H, W] model-space latents -> [batch, H*W, 128] tokens (row-major, as ComfyUI and diffusers)."""
    batch, channels, height, width = latents.shape
    return latents.reshape(batch, channels, height * width).permute(0, 2, 1)


def unpack_flux2_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_flux2_latents`."""
    batch, _, channels = tokens.shape
    return tokens.permute(0, 2, 1).reshape(batch, channels, height, width)


def flux2_image_ids(height: int, width: int, t: float = 0.0, device=None) -> torch.Tensor:
    """Position ids [H*W, 4] of a latent: ``(t, row, column, 0)``."""
    ids = torch.zeros(height, width, FLUX2_ID_AXES, device=device, dtype=torch.float32)
    ids[..., 0] = t
    ids[..., 1] = torch.arange(height, device=device, dtype=torch.float32)[:, None]
    ids[..., 2] = torch.arange(width, device=device, dtype=torch.float32)[None, :]
    return ids.reshape(height * width, FLUX2_ID_AXES)


def flux2_text_ids(num_tokens: int, device=None) -> torch.Tensor:
    """Text position ids [tokens, 4]: ``(0, 0, 0, l)`` with ``l = 0 .. tokens-1``."""
    ids = torch.zeros(num_tokens, FLUX2_ID_AXES, device=device, dtype=torch.float32)
    ids[:, 3] = torch.arange(num_tokens, device=device, dtype=torch.float32)
    return ids


def flux2_reference_time(index: int) -> float:
    """The ``t`` id of reference ``index`` (from 0): 10, 20, ..."""
    return float(FLUX2_REF_INDEX_SCALE * (index + 1))


def check_flux2_reference_method(method: str | None) -> str:
    """FLUX.2 training places references by ComfyUI's FLUX.2 default, ``index``; anything else is refused."""
    name = "index" if method is None else str(method).strip().lower()
    if name not in FLUX2_REFERENCE_METHODS:
        raise DLAInputError(
            f"Reference placement '{method}' is not supported for FLUX.2: FLUX.2 places each reference at its own "
            f"time offset (method 'index', ComfyUI's FLUX.2 default). Set train.reference_method: index or remove it."
        )
    return name


def flux2_reference_tokens(
    reference_latents: Sequence[torch.Tensor], batch_size: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """References (each [b, 128, h, w]; b = 1 is shared by the batch) -> tokens [batch, N, 128] and ids [N, 4]."""
    if not reference_latents:
        return None, None
    tokens, ids = [], []
    for index, ref in enumerate(reference_latents):
        if ref.shape[0] != batch_size:
            ref = ref.expand(batch_size, *ref.shape[1:]) if ref.shape[0] == 1 else ref[:batch_size]
        tokens.append(pack_flux2_latents(ref))
        ids.append(flux2_image_ids(ref.shape[-2], ref.shape[-1], flux2_reference_time(index), device=ref.device))
    return torch.cat(tokens, dim=1), torch.cat(ids, dim=0)


def flux2_text_length(valid_tokens: int) -> int:
    """Length of the context FLUX.2 sees for ``valid_tokens`` conditioning tokens (ComfyUI pads up to 512)."""
    return max(FLUX2_TEXT_TOKENS, int(valid_tokens))


def flux2_context(context: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Each sample's valid tokens (left-aligned by ``text_mask``) with zeros in front, to :func:`flux2_text_length`.

    ComfyUI pads a shorter context with zeros in front (``model_base.Flux2``) and masks nothing. All
    samples of a call must come to the same length; samples longer than 512 tokens run on their own.
    """
    batch, tokens, width = context.shape
    counts = (
        torch.full((batch,), tokens, dtype=torch.long) if text_mask is None else text_mask.sum(1).to("cpu", torch.long)
    )
    lengths = {flux2_text_length(int(n)) for n in counts}
    if len(lengths) != 1:
        raise DLAInputError(
            f"These FLUX.2 samples have {counts.tolist()} conditioning tokens: ComfyUI pads each to 512 tokens, so "
            "samples longer than 512 tokens cannot share a call with others; run them separately."
        )
    length = lengths.pop()
    out = context.new_zeros(batch, length, width)
    for row in range(batch):
        n = int(counts[row])
        out[row, length - n :] = context[row, :n]
    return out


def flux2_velocity_tokens(
    transformer,
    latents: torch.Tensor,
    sigma: torch.Tensor | float,
    context: torch.Tensor,
    guidance: float | torch.Tensor | None = None,
    reference_latents: Sequence[torch.Tensor] | None = None,
    text_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One FLUX.2 velocity prediction with ComfyUI's token layout, as tokens: the one FLUX.2 call of the pack.

    Training (``dla_core.train.module``), the standalone pipeline and the tests call it.
    latents: [batch, 128, H, W] model space; sigma: flow time in [0, 1] (scalar or [batch]);
    context: [batch, tokens, C] (C = 7680 [klein] 4B, 12288 [klein] 9B, 15360 [dev]), valid tokens first
    where ``text_mask`` [batch, tokens] is given; guidance: [dev]'s distilled guidance (None ->
    :data:`FLUX2_DEV_GUIDANCE`; ignored by [klein]). Returns the target image's velocity tokens
    [batch, H*W, 128] in the transformer's dtype (reference tokens dropped).
    """
    batch, _, height, width = latents.shape
    dtype = transformer.dtype
    device = latents.device
    image = pack_flux2_latents(latents)
    image_tokens = image.shape[1]
    image_ids = flux2_image_ids(height, width, device=device)
    ref_tokens, ref_ids = flux2_reference_tokens(reference_latents or [], batch)
    if ref_tokens is not None:
        image = torch.cat([image, ref_tokens.to(device=device, dtype=image.dtype)], dim=1)
        image_ids = torch.cat([image_ids, ref_ids.to(device)], dim=0)
    context = flux2_context(context, text_mask)
    timestep = torch.as_tensor(sigma, device=device, dtype=torch.float32).reshape(-1).expand(batch)
    guidance_tensor = None
    if getattr(transformer.config, "guidance_embeds", False):
        value = FLUX2_DEV_GUIDANCE if guidance is None else guidance
        guidance_tensor = torch.as_tensor(value, device=device, dtype=torch.float32).reshape(-1).expand(batch)
    out = transformer(
        hidden_states=image.to(dtype),
        encoder_hidden_states=context.to(device=device, dtype=dtype),
        timestep=timestep.to(dtype),
        img_ids=image_ids,
        txt_ids=flux2_text_ids(context.shape[1], device=device),
        guidance=None if guidance_tensor is None else guidance_tensor.to(dtype),
        return_dict=False,
    )[0]
    return out[:, :image_tokens]  # [batch, H*W, 128]


def flux2_forward(
    transformer,
    latents: torch.Tensor,
    sigma: torch.Tensor | float,
    context: torch.Tensor,
    guidance: float | torch.Tensor | None = None,
    reference_latents: Sequence[torch.Tensor] | None = None,
    text_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`flux2_velocity_tokens` unpacked: the target's velocity [batch, 128, H, W] in ``latents``' dtype."""
    height, width = latents.shape[-2:]
    out = flux2_velocity_tokens(transformer, latents, sigma, context, guidance, reference_latents, text_mask)
    return unpack_flux2_latents(out, height, width).to(latents.dtype)


@torch.no_grad()
def encode_flux2_latent(vae, pixels: torch.Tensor) -> torch.Tensor:
    """[3, h, w] in [-1, 1] -> FLUX.2 model-space latent [128, h/16, w/16] (float32, CPU).

    As diffusers' FLUX.2 pipelines: the posterior mean, 2x2 patchified to 128 channels, then normalised
    by the VAE's batch-norm running statistics.
    """
    param = next(vae.parameters())
    latent = vae.encode(pixels[None].to(param.device, param.dtype)).latent_dist.mode().float()
    batch, channels, height, width = latent.shape
    latent = latent.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 1, 3, 5, 2, 4)
    latent = latent.reshape(batch, channels * 4, height // 2, width // 2)
    mean = vae.bn.running_mean.view(1, -1, 1, 1).float()
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1).float() + vae.config.batch_norm_eps)
    return ((latent - mean.to(latent.device)) / std.to(latent.device))[0].cpu()
