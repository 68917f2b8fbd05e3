"""The method, independent of ComfyUI: MLLM features -> Dual Layer Aggregation -> DiT conditioning.

Importing this package is light: it pulls in torch and the pack's own small modules, never
ComfyUI, diffusers or transformers' model code (those load lazily where they are used).
"""

from .checkpoint import init_dla, load_dla, read_dla_config, save_dla
from .dla import TARGETS, DLAConditioning, DLAConfig, DualLayerAggregation, target_spec
from .errors import DLACheckpointError, DLAInputError
from .features import MLLMFeatures
from .flux.sampling import flux_sigmas
from .lap import LayerwiseAttentionPooling
from .schedule import (
    describe_schedule,
    stage_for_sigma,
    stage_step_counts,
    stages_for_sigmas,
    validate_taus,
)
from .spec import MLLMSpec, read_mllm_spec

__all__ = [
    "DLACheckpointError",
    "DLAConditioning",
    "DLAConfig",
    "DLAInputError",
    "DualLayerAggregation",
    "LayerwiseAttentionPooling",
    "MLLMFeatures",
    "MLLMSpec",
    "TARGETS",
    "describe_schedule",
    "flux_sigmas",
    "init_dla",
    "load_dla",
    "read_dla_config",
    "read_mllm_spec",
    "save_dla",
    "stage_for_sigma",
    "stage_step_counts",
    "stages_for_sigmas",
    "target_spec",
    "validate_taus",
]
