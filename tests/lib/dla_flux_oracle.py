"""TEST ORACLE: FLUX.1-dev's shifted sigmas written out in plain Python, independent of the pack and diffusers.

The pack's one schedule is :func:`dla_core.flux.sampling.flux_sigmas` (diffusers' scheduler with
:func:`dla_core.flux.sampling.calculate_mu`); the tests compare it with this closed form and use
this form for the paper's stage counts.
"""

from __future__ import annotations

import math

BASE_SHIFT, MAX_SHIFT = 0.5, 1.15  # mu at 256 and at 4096 image tokens
BASE_SEQ_LEN, MAX_SEQ_LEN = 256, 4096
PIXELS_PER_TOKEN = 16  # VAE downsamples 8x, the DiT patchifies 2x2


def flux_shift_mu(width: int, height: int, base_shift: float = BASE_SHIFT, max_shift: float = MAX_SHIFT) -> float:
    """FLUX's time shift ``mu``: linear in the number of image tokens ``(width / 16) * (height / 16)``."""
    seq_len = (width / PIXELS_PER_TOKEN) * (height / PIXELS_PER_TOKEN)
    slope = (max_shift - base_shift) / (MAX_SEQ_LEN - BASE_SEQ_LEN)
    return base_shift + slope * (seq_len - BASE_SEQ_LEN)


def flux_time_shift(mu: float, t: float) -> float:
    """Shifted sigma ``e^mu / (e^mu + (1/t - 1))`` for unshifted time ``t`` in (0, 1]."""
    if t <= 0.0:
        return 0.0
    return math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))


def flux_shifted_sigmas(width: int, height: int, steps: int) -> list[float]:
    """``steps + 1`` sigmas (trailing 0): times ``1 - i/steps`` shifted with :func:`flux_time_shift`."""
    mu = flux_shift_mu(width, height)
    return [flux_time_shift(mu, 1.0 - i / steps) for i in range(steps)] + [0.0]
