"""The multi-stage denoising schedule of the paper (Zheng et al., arXiv 2605.26111, inference: multi-stage denoising).

With normalised model time ``t`` in [0, 1] (1 = pure noise; for flow models such as FLUX
``t`` is exactly the sigma the model receives):

====== ===================== ============== ============
stage  when                  MLLM condition VAE identity
====== ===================== ============== ============
1      ``t >= tau1``         on             off
2      ``tau2 <= t < tau1``  on             on
3      ``t < tau2``          off            on
====== ===================== ============== ============

Everything here is a pure function of sigmas and taus, so the sampler can decide the stage
per model call (second-order samplers included) and the UI can print a summary before
sampling starts. :class:`StageTaus` holds a validated pair of thresholds: build it once where
the taus come in (a node input, a pipeline argument) and ask it for the stage of every model
call without checking the taus again.

ComfyUI sigma lists have ``steps + 1`` entries and end with a trailing 0: step ``i``
(0-based) denoises from ``sigmas[i]`` to ``sigmas[i + 1]`` and the model is called at
``sigmas[i]``. Functions that take a sigma list therefore ignore the last entry unless
``include_last=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import DLAInputError

STAGE_MLLM_ONLY = 1
STAGE_MLLM_AND_IDENTITY = 2
STAGE_IDENTITY_ONLY = 3
ALL_STAGES = (STAGE_MLLM_ONLY, STAGE_MLLM_AND_IDENTITY, STAGE_IDENTITY_ONLY)

STAGE_LABELS = {
    STAGE_MLLM_ONLY: "MLLM only",
    STAGE_MLLM_AND_IDENTITY: "MLLM + identity",
    STAGE_IDENTITY_ONLY: "identity only",
}

# The paper's defaults (arXiv 2605.26111, multi-stage denoising).
DEFAULT_TAU1 = 0.95
DEFAULT_TAU2 = 0.85


def validate_taus(tau1: float, tau2: float) -> None:
    """Raise :class:`DLAInputError` unless ``0 <= tau2 <= tau1 <= 1``."""
    for name, value in (("tau1", tau1), ("tau2", tau2)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, (bool, str)) or math.isnan(number):
            raise DLAInputError(f"{name} must be a number between 0 and 1, got {value!r}.")
    tau1, tau2 = float(tau1), float(tau2)
    if not (0.0 <= tau2 <= tau1 <= 1.0):
        raise DLAInputError(
            f"tau1={tau1} and tau2={tau2} break the rule 0 <= tau2 <= tau1 <= 1: the MLLM-only stage "
            "(t >= tau1) must come before the identity-only stage (t < tau2). "
            f"Set tau2 no larger than tau1 (paper default: tau1={DEFAULT_TAU1}, tau2={DEFAULT_TAU2})."
        )


@dataclass(frozen=True)
class StageTaus:
    """The two stage thresholds, checked once (``0 <= tau2 <= tau1 <= 1``); :meth:`stage` does not check again."""

    tau1: float
    tau2: float

    def __post_init__(self) -> None:
        validate_taus(self.tau1, self.tau2)
        object.__setattr__(self, "tau1", float(self.tau1))
        object.__setattr__(self, "tau2", float(self.tau2))

    def stage(self, t: float) -> int:
        """Stage (1, 2 or 3) for one model call at normalised time ``t``; boundaries as in the paper (arXiv 2605.26111).

        ``t == tau1`` is stage 1, ``t == tau2`` is stage 2 (when ``tau2 < tau1``); with
        ``tau1 == tau2`` there is no stage 2.
        """
        t = float(t)
        if math.isnan(t):
            raise DLAInputError(
                "The sampler passed a NaN sigma; check the scheduler and the model's sampling settings."
            )
        if t >= self.tau1:
            return STAGE_MLLM_ONLY
        if t >= self.tau2:
            return STAGE_MLLM_AND_IDENTITY
        return STAGE_IDENTITY_ONLY

    def stages_in_range(self, t_high: float, t_low: float) -> tuple[int, ...]:
        """Stages a sampler can visit for normalised times in ``[t_low, t_high]`` (in stage order).

        Samplers call the model at the listed sigmas but also in between (second-order midpoints,
        ancestral steps), so the conditioning of every stage in the closed interval must be ready.
        Stages are monotone in ``t`` (stage 1 at high ``t``), so this is every stage from the one
        of ``t_high`` to the one of ``t_low``; a stage with an empty interval (``tau1 == tau2``
        has no stage 2) is left out.
        """
        first, last = self.stage(max(t_high, t_low)), self.stage(min(t_high, t_low))
        stages = tuple(range(first, last + 1))
        if self.tau1 == self.tau2:
            stages = tuple(stage for stage in stages if stage != STAGE_MLLM_AND_IDENTITY)
        return stages


def stage_for_sigma(t: float, tau1: float, tau2: float) -> int:
    """Stage (1, 2 or 3) for one model call at normalised time ``t`` (checks the taus; see :meth:`StageTaus.stage`)."""
    return StageTaus(tau1, tau2).stage(t)


def _as_float_list(sigmas) -> list[float]:
    if isinstance(sigmas, torch.Tensor):
        return [float(s) for s in sigmas.detach().flatten().cpu().tolist()]
    return [float(s) for s in sigmas]


def _step_sigmas(sigmas, include_last: bool) -> list[float]:
    values = _as_float_list(sigmas)
    return values if include_last else values[:-1]


def stages_for_sigmas(
    sigmas: Sequence[float] | torch.Tensor, tau1: float, tau2: float, include_last: bool = False
) -> list[int]:
    """Stage of every sampling step of a sigma list (list or 1-D tensor).

    By default the trailing entry (ComfyUI's final 0, the end point of the last step, at
    which the model is never called) is dropped, so the result has ``len(sigmas) - 1``
    entries, one per step. ``include_last=True`` classifies every entry.
    """
    validate_taus(tau1, tau2)
    values = torch.tensor(_step_sigmas(sigmas, include_last), dtype=torch.float64)
    if torch.isnan(values).any():
        raise DLAInputError("The sigma list holds NaN; check the scheduler and the model's sampling settings.")
    stages = torch.full_like(values, STAGE_IDENTITY_ONLY, dtype=torch.int64)
    stages[values >= tau2] = STAGE_MLLM_AND_IDENTITY
    stages[values >= tau1] = STAGE_MLLM_ONLY
    return stages.tolist()


def stage_step_counts(sigmas, tau1: float, tau2: float, include_last: bool = False) -> tuple[int, int, int]:
    """Number of steps in stages 1, 2 and 3."""
    stages = stages_for_sigmas(sigmas, tau1, tau2, include_last=include_last)
    return tuple(stages.count(stage) for stage in (1, 2, 3))  # type: ignore[return-value]


def describe_schedule(sigmas, tau1: float, tau2: float, include_last: bool = False) -> str:
    """Human-readable summary, e.g. ``"steps 1-4: MLLM only; 5-11: MLLM + identity; 12-28: identity only"``.

    Steps are 1-based; empty stages are left out. Non-monotone sigma lists (unusual custom
    schedules) give one entry per run of equal stages.
    """
    stages = stages_for_sigmas(sigmas, tau1, tau2, include_last=include_last)
    if not stages:
        return "no steps"
    runs: list[tuple[int, int, int]] = []  # (first step, last step, stage), 1-based
    for index, stage in enumerate(stages, start=1):
        if runs and runs[-1][2] == stage:
            runs[-1] = (runs[-1][0], index, stage)
        else:
            runs.append((index, index, stage))
    parts = []
    for position, (first, last, stage) in enumerate(runs):
        span = str(first) if first == last else f"{first}-{last}"
        if position == 0:
            span = ("step " if first == last else "steps ") + span
        parts.append(f"{span}: {STAGE_LABELS[stage]}")
    return "; ".join(parts)
