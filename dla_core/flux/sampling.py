"""FLUX sampling for the standalone pipeline: shifted flow-matching sigmas and the staged Euler loop.

Sigmas come from diffusers' ``FlowMatchEulerDiscreteScheduler`` with FLUX.1-dev's scheduler
config (dynamic exponential shift, ``mu`` linear in the image token count, exactly as
``FluxPipeline`` computes it). For a step count that divides 10000 these are the sigmas of
ComfyUI's "simple" scheduler on a model patched by ``ModelSamplingFlux`` for the same
width/height (ComfyUI samples a 10000-entry table, so other step counts differ by < 1e-4 in
time before the shift).

The loop is plain Euler on the velocity: ``x <- x + (sigma_next - sigma) * v(x, sigma)``,
the update of ComfyUI's ``euler`` sampler for a flow model (``denoised = x - sigma * v``,
``x <- x + (x - denoised) / sigma * dt``). Each model call picks its conditioning from the
sigma with :meth:`dla_core.schedule.StageTaus.stage` (the taus checked once, before the loop):

- stage 1 (``sigma >= tau1``): DLA tokens, no reference latents;
- stage 2 (``tau2 <= sigma < tau1``): DLA tokens + reference latents;
- stage 3 (``sigma < tau2``): the DLA's learned null ("MLLM off") tokens + reference latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DLAInputError
from ..schedule import STAGE_IDENTITY_ONLY, STAGE_MLLM_ONLY, StageTaus
from .references import DEFAULT_REFERENCE_METHOD, flux_forward

VAE_SCALE_FACTOR = 8  # FLUX's VAE downsamples 8x
LATENT_CHANNELS = 16
DEFAULT_GUIDANCE = 2.5  # the paper's inference guidance; FLUX Kontext's default distilled guidance too

# FLUX's resolution-dependent shift (diffusers' FlowMatchEulerDiscreteScheduler config for
# FLUX.1-dev and ComfyUI's ModelSamplingFlux node): mu is linear in the image sequence
# length, from BASE_SHIFT at 256 tokens to MAX_SHIFT at 4096 tokens.
FLUX_BASE_SHIFT = 0.5
FLUX_MAX_SHIFT = 1.15
FLUX_BASE_SEQ_LEN = 256
FLUX_MAX_SEQ_LEN = 4096

# FLUX.1-dev's scheduler/scheduler_config.json.
FLUX_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": FLUX_BASE_SHIFT,
    "max_shift": FLUX_MAX_SHIFT,
    "base_image_seq_len": FLUX_BASE_SEQ_LEN,
    "max_image_seq_len": FLUX_MAX_SEQ_LEN,
}


def make_flux_scheduler():
    """A ``FlowMatchEulerDiscreteScheduler`` configured like FLUX.1-dev's."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)


def image_seq_len(height: int, width: int) -> int:
    """Number of packed image tokens of a ``height`` x ``width`` pixel image."""
    return (height // (VAE_SCALE_FACTOR * 2)) * (width // (VAE_SCALE_FACTOR * 2))


def calculate_mu(seq_len: int, config: dict = FLUX_SCHEDULER_CONFIG) -> float:
    """FLUX's shift ``mu`` for ``seq_len`` packed image tokens: the one ``mu`` of the pack.

    Linear in the token count, evaluated in the order of diffusers' ``calculate_shift`` (which
    ComfyUI's ModelSamplingFlux node matches): ``mu = seq_len * m + b``. Sampling and training both use it.
    """
    slope = (config["max_shift"] - config["base_shift"]) / (config["max_image_seq_len"] - config["base_image_seq_len"])
    intercept = config["base_shift"] - slope * config["base_image_seq_len"]
    return seq_len * slope + intercept


def flux_sigmas(height: int, width: int, steps: int, device=None) -> torch.Tensor:
    """Sigmas [steps + 1] (trailing 0) for ``steps`` steps at ``height`` x ``width`` pixels:
    the pack's one FLUX schedule.

    Unshifted times ``linspace(1, 1/steps, steps)`` (diffusers' FluxPipeline), each shifted to
    ``e^mu / (e^mu + 1/t - 1)`` with :func:`calculate_mu`.
    """
    if not isinstance(steps, int) or steps < 1:
        raise DLAInputError(f"steps must be a whole number of at least 1, got {steps!r}.")
    scheduler = make_flux_scheduler()
    base = np.linspace(1.0, 1.0 / steps, steps)
    scheduler.set_timesteps(sigmas=base, mu=calculate_mu(image_seq_len(height, width)), device=device)
    return scheduler.sigmas.to(torch.float32)


@dataclass
class StagedConditioning:
    """Everything the staged loop needs, batch-expanded.

    ``tokens`` / ``pooled``: DLA conditioning [batch, tokens, 4096] / [batch, 768] (stages 1-2);
    ``null_tokens`` / ``null_pooled``: the DLA's "MLLM off" conditioning (stage 3 and the CFG
    negative); ``reference_latents``: model-space latents, each [1 or batch, 16, h, w].
    """

    tokens: torch.Tensor
    pooled: torch.Tensor
    null_tokens: torch.Tensor
    null_pooled: torch.Tensor
    reference_latents: Sequence[torch.Tensor]
    reference_method: str = DEFAULT_REFERENCE_METHOD

    def for_stage(self, stage: int):
        """(context, pooled, reference latents) of one stage."""
        refs = [] if stage == STAGE_MLLM_ONLY else list(self.reference_latents)
        if stage == STAGE_IDENTITY_ONLY:
            return self.null_tokens, self.null_pooled, refs
        return self.tokens, self.pooled, refs

    def negative_for_stage(self, stage: int):
        """CFG negative of one stage: MLLM off, the same reference latents as the positive."""
        refs = [] if stage == STAGE_MLLM_ONLY else list(self.reference_latents)
        return self.null_tokens, self.null_pooled, refs


def staged_euler_sample(
    transformer,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    conditioning: StagedConditioning,
    tau1: float,
    tau2: float,
    guidance: float | None = DEFAULT_GUIDANCE,
    true_cfg_scale: float = 1.0,
    progress: bool = True,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
    forward: Callable = flux_forward,
) -> tuple[torch.Tensor, list[int]]:
    """Denoise ``latents`` ([batch, 16, h, w] model space, already noised to ``sigmas[0]``).

    Returns the final latents (float32, model space) and the stage of every step.
    ``true_cfg_scale`` > 1 adds a second model call per step with the stage's negative
    (:meth:`StagedConditioning.negative_for_stage`) and mixes ``neg + scale * (pos - neg)``.
    ``callback(step, stage, latents)`` runs after each step. ``forward``: the model call, FLUX.1's
    :func:`~dla_core.flux.references.flux_forward` or FLUX.2's ``flux2_sampling.flux2_loop_forward``.
    """
    taus = StageTaus(tau1, tau2)
    x = latents.to(torch.float32)
    stages: list[int] = []
    steps = len(sigmas) - 1
    method = conditioning.reference_method
    with tqdm(total=steps, disable=not progress, desc="DLA staged sampling") as bar:
        for index in range(steps):
            sigma, sigma_next = float(sigmas[index]), float(sigmas[index + 1])
            stage = taus.stage(sigma)
            stages.append(stage)
            context, pooled, refs = conditioning.for_stage(stage)
            velocity = forward(transformer, x, sigma, context, pooled, guidance, refs, method).float()
            if true_cfg_scale != 1.0:
                neg_context, neg_pooled, neg_refs = conditioning.negative_for_stage(stage)
                negative = forward(transformer, x, sigma, neg_context, neg_pooled, guidance, neg_refs, method).float()
                velocity = negative + true_cfg_scale * (velocity - negative)
            x = x + (sigma_next - sigma) * velocity
            bar.set_postfix(stage=stage)
            bar.update(1)
            if callback is not None:
                callback(index, stage, x)
    return x, stages
