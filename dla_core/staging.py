"""Small pure helpers behind the staged sampler and the identity encoder (no ComfyUI here).

* :func:`stages_in_range`: which stages a sampler can visit between two sigmas. Samplers
  call the model at the listed sigmas but also in between (second-order midpoints,
  ancestral steps), so the conditioning of every stage in the closed interval must be ready.
* :func:`identity_resolution`: the pixel size a reference image is VAE-encoded at: aspect
  kept, sides multiples of 16 (FLUX: 8x VAE downsampling times 2x2 patches), area capped.
* :func:`strip_padding`: DLA output rows without their right padding.
"""

from __future__ import annotations

import math

import torch

from .errors import DLAInputError
from .schedule import STAGE_IDENTITY_ONLY, STAGE_MLLM_AND_IDENTITY, STAGE_MLLM_ONLY, stage_for_sigma

ALL_STAGES = (STAGE_MLLM_ONLY, STAGE_MLLM_AND_IDENTITY, STAGE_IDENTITY_ONLY)
IDENTITY_MULTIPLE = 16  # px; FLUX latents are 1/8 of the image and patchified 2x2
MAX_IDENTITY_MEGAPIXELS = 16.0  # beyond this a reference is surely a mistake (and would not fit a GPU)


def stages_in_range(t_high: float, t_low: float, tau1: float, tau2: float) -> tuple[int, ...]:
    """Stages a sampler can visit for normalised times in ``[t_low, t_high]`` (in stage order).

    Stages are monotone in ``t`` (stage 1 at high ``t``), so this is every stage from the one
    of ``t_high`` to the one of ``t_low``; a stage with an empty interval (``tau1 == tau2``
    has no stage 2) is left out.
    """
    first = stage_for_sigma(max(t_high, t_low), tau1, tau2)
    last = stage_for_sigma(min(t_high, t_low), tau1, tau2)
    stages = tuple(range(first, last + 1))
    if tau1 == tau2:
        stages = tuple(stage for stage in stages if stage != STAGE_MLLM_AND_IDENTITY)
    return stages


def identity_resolution(
    width: int, height: int, megapixels: float, upscale: bool = False, multiple: int = IDENTITY_MULTIPLE
) -> tuple[int, int]:
    """Width and height (px) to encode a ``width`` x ``height`` reference at.

    The aspect ratio is kept; the area is scaled to at most ``megapixels`` million pixels
    (exactly that when ``upscale`` is true, also enlarging small images); each side is then
    rounded to the nearest multiple of ``multiple`` (at least one multiple). ``megapixels``
    0 means no area limit (only the rounding).
    """
    if width < 1 or height < 1:
        raise DLAInputError(f"Reference image is {width}x{height} px; it must have at least 1 px per side.")
    if not (0.0 <= megapixels <= MAX_IDENTITY_MEGAPIXELS) or math.isnan(megapixels):
        raise DLAInputError(
            f"Identity resolution {megapixels} MP is out of range; use 0 (keep size) up to {MAX_IDENTITY_MEGAPIXELS} "
            "MP "
            "(FLUX Kontext-style references are about 1 MP)."
        )
    scale = 1.0
    if megapixels > 0:
        target = megapixels * 1_000_000
        scale = math.sqrt(target / (width * height))
        if not upscale:
            scale = min(scale, 1.0)
    new_width = max(multiple, round(width * scale / multiple) * multiple)
    new_height = max(multiple, round(height * scale / multiple) * multiple)
    return int(new_width), int(new_height)


def strip_padding(tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Drop right padding from DLA tokens: ``[batch, tokens, width]`` -> ``[batch, valid, width]``.

    FLUX's joint attention has no text-token mask, so padded positions would be attended to
    like real tokens; every sample of a batch must therefore have the same number of valid
    tokens. Raises :class:`DLAInputError` when they differ.
    """
    counts = token_mask.sum(dim=1)  # [batch]
    if counts.numel() == 0:
        raise DLAInputError("The DLA produced an empty batch; encode at least one prompt.")
    if bool((counts != counts[0]).any()):
        raise DLAInputError(
            f"The samples of this MLLM batch give different token counts ({counts.tolist()}); FLUX cannot mask padded "
            "text tokens, so they cannot share one conditioning. Encode each prompt/reference set with its own "
            "MLLM Joint Encode node (or use references of the same size) and sample them separately."
        )
    valid = int(counts[0])
    expected = torch.arange(tokens.shape[1], device=token_mask.device)[None, :] < valid
    if not bool((token_mask == expected).all()):
        raise DLAInputError("DLA token mask is not right-padded; the DLA output is inconsistent.")
    return tokens[:, :valid]
