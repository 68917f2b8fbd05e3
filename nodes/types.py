"""The pack's socket types and the objects that travel through them.

ComfyUI passes node outputs by reference and caches them, so every payload here is treated
as immutable by the nodes that receive it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from comfy_api.latest import io

from ..dla_core.errors import DLAInputError
from ..dla_core.flux.references import REFERENCE_METHODS as FLUX_REFERENCE_METHODS

MLLM = io.Custom("MLLM")
MLLM_FEATURES = io.Custom("MLLM_FEATURES")
DLA = io.Custom("DLA")
IDENTITY = io.Custom("IDENTITY")

CATEGORY = "DLA subject"

# Key on FLUX conditioning entries that carries the DLA's learned "MLLM off" conditioning
# (``[[null_tokens, {"pooled_output": null_pooled}]]``), read by the staged sampler.
MLLM_OFF_KEY = "dla_mllm_off"

REFERENCE_METHODS = FLUX_REFERENCE_METHODS  # the FLUX placements (dla_core.flux.references)


@dataclass(frozen=True)
class MLLMHandle:
    """An MLLM loaded by ``DLAMLLMLoader``: the ``ModelPatcher`` ComfyUI manages + the loaded model."""

    patcher: object  # comfy.model_patcher.ModelPatcher around the transformers model
    loaded: object  # dla_core.mllm.LoadedMLLM

    @property
    def name(self) -> str:
        return self.loaded.name


@dataclass(frozen=True)
class DLAHandle:
    """A DLA checkpoint loaded by ``DLALoader``."""

    patcher: object  # comfy.model_patcher.ModelPatcher around the DualLayerAggregation
    module: object  # dla_core.dla.DualLayerAggregation
    file_name: str


@dataclass(frozen=True)
class ReferenceIdentity:
    """VAE identity: reference latents (one ``[1, 16, h, w]`` tensor each) + how FLUX places them."""

    latents: tuple[torch.Tensor, ...]
    method: str
    pixel_sizes: tuple[tuple[int, int], ...] = field(default=())  # (width, height) encoded, per reference

    def conditioning_values(self) -> dict:
        """The native ComfyUI conditioning keys this identity sets (``reference_latents`` is appended to)."""
        return {"reference_latents": list(self.latents), "reference_latents_method": self.method}


def expect(value, kind: type, socket: str, source: str):
    """Return ``value`` if it is a ``kind``; otherwise raise an error naming the node to connect."""
    if not isinstance(value, kind):
        raise DLAInputError(
            f"The '{socket}' input received a {type(value).__name__}, not what {source} outputs. "
            f"Connect the output of {source} to it."
        )
    return value
