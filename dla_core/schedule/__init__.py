"""The staged schedule, free of ComfyUI: which stage a model call is in, and which references are active.

* :mod:`.stages`: the paper's three stages (arXiv 2605.26111, multi-stage denoising) from tau1/tau2:
  :class:`StageTaus` (checked once), the stage of a time or of every step, the summary printed before
  sampling.
* :mod:`.timing`: per-reference timing, each reference active over its own range of normalised time.

The ComfyUI guider that applies them per model call is ``nodes/staged_guider.py``; the standalone
pipeline's Euler loop is :mod:`dla_core.flux.sampling`.
"""

from .stages import (
    ALL_STAGES,
    DEFAULT_TAU1,
    DEFAULT_TAU2,
    STAGE_IDENTITY_ONLY,
    STAGE_LABELS,
    STAGE_MLLM_AND_IDENTITY,
    STAGE_MLLM_ONLY,
    StageTaus,
    describe_schedule,
    stage_for_sigma,
    stage_step_counts,
    stages_for_sigmas,
    validate_taus,
)
from .timing import (
    TIMING_EXAMPLE,
    ReferenceRange,
    active_mask,
    check_reference_count,
    describe_mask,
    parse_reference_timing,
    probe_times,
)

__all__ = [
    "ALL_STAGES",
    "DEFAULT_TAU1",
    "DEFAULT_TAU2",
    "STAGE_IDENTITY_ONLY",
    "STAGE_LABELS",
    "STAGE_MLLM_AND_IDENTITY",
    "STAGE_MLLM_ONLY",
    "TIMING_EXAMPLE",
    "ReferenceRange",
    "StageTaus",
    "active_mask",
    "check_reference_count",
    "describe_mask",
    "describe_schedule",
    "parse_reference_timing",
    "probe_times",
    "stage_for_sigma",
    "stage_step_counts",
    "stages_for_sigmas",
    "validate_taus",
]
