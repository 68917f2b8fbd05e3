"""FLUX.2 for the standalone pipeline: latent shape, VAE decode, the sigma schedule and the model call of the loop.

- Latents: 128 channels at 1/16 of the image side (the VAE's 32 channels at 1/8, 2x2 patchified and
  normalised by the VAE's batch-norm statistics). That normalised latent is what the transformer sees
  *and* what a ComfyUI FLUX.2 LATENT holds (ComfyUI's FLUX.2 latent format scales nothing), so the
  pipeline's model space and VAE space are the same.
- Sigmas: BFL's FLUX.2 schedule, which ComfyUI's ``Flux2Scheduler`` node and diffusers' FLUX.2 pipelines
  use: ``mu`` from the image token count and the step count (``compute_empirical_mu``), then
  ``t -> e^mu / (e^mu + 1/t - 1)`` on ``linspace(1, 0, steps + 1)``.
- The loop's model call: :func:`dla_core.flux.flux2.flux2_forward` (no pooled vector).
"""

from __future__ import annotations

import math

import torch

from ..errors import DLAInputError
from .flux2 import flux2_forward

FLUX2_LATENT_CHANNELS = 128
FLUX2_PIXELS_PER_LATENT = 16  # 8x VAE, then 2x2 patches into channels

# BFL's empirical fit of the shift (diffusers: pipelines/flux2, compute_empirical_mu).
_MU_SLOPE_10, _MU_INTERCEPT_10 = 8.73809524e-05, 1.89833333  # mu at 10 steps, per image token
_MU_SLOPE_200, _MU_INTERCEPT_200 = 0.00016927, 0.45666666  # mu at 200 steps (and for > 4300 tokens)
_MU_LONG_SEQUENCE = 4300


def flux2_mu(image_tokens: int, steps: int) -> float:
    """FLUX.2's shift for ``image_tokens`` latent tokens and ``steps`` steps: linear in the steps between the
    10- and 200-step fits, the 200-step fit alone above 4300 tokens."""
    at_200 = _MU_SLOPE_200 * image_tokens + _MU_INTERCEPT_200
    if image_tokens > _MU_LONG_SEQUENCE:
        return float(at_200)
    at_10 = _MU_SLOPE_10 * image_tokens + _MU_INTERCEPT_10
    slope = (at_200 - at_10) / 190.0
    return float(slope * steps + (at_200 - 200.0 * slope))


def flux2_sigmas(height: int, width: int, steps: int) -> torch.Tensor:
    """Sigmas [steps + 1] (1 ... 0) of ``steps`` steps at ``height`` x ``width`` pixels, as ComfyUI's
    ``Flux2Scheduler`` gives them (float32)."""
    if not isinstance(steps, int) or steps < 1:
        raise DLAInputError(f"steps must be a whole number of at least 1, got {steps!r}.")
    mu = flux2_mu(round(width * height / FLUX2_PIXELS_PER_LATENT**2), steps)
    times = torch.linspace(1, 0, steps + 1)
    shift = math.exp(mu)
    return shift / (shift + (1 / times - 1))  # t = 0 -> 1/0 = inf -> sigma 0


def flux2_latent_shape(batch: int, height: int, width: int) -> tuple[int, int, int, int]:
    return (batch, FLUX2_LATENT_CHANNELS, height // FLUX2_PIXELS_PER_LATENT, width // FLUX2_PIXELS_PER_LATENT)


@torch.no_grad()
def decode_flux2_latent(vae, latents: torch.Tensor) -> torch.Tensor:
    """Normalised 128-channel latents [batch, 128, h, w] -> images [batch, 3, 16h, 16w] in [-1, 1] (VAE dtype)."""
    param = next(vae.parameters())
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, torch.float32)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1).float() + vae.config.batch_norm_eps).to(latents.device)
    raw = latents.float() * std + mean
    batch, channels, height, width = raw.shape
    raw = raw.reshape(batch, channels // 4, 2, 2, height, width).permute(0, 1, 4, 2, 5, 3)
    raw = raw.reshape(batch, channels // 4, height * 2, width * 2)
    return vae.decode(raw.to(param.device, param.dtype)).sample


def flux2_loop_forward(transformer, latents, sigma, context, pooled, guidance, references, method):
    """The staged loop's model call for FLUX.2 (``pooled`` and ``method`` are FLUX.1's; FLUX.2 has neither)."""
    return flux2_forward(transformer, latents, sigma, context, guidance, references)
