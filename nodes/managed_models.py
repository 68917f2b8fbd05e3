"""Plain PyTorch models (the Hugging Face MLLM, the DLA) under ComfyUI's model management, whole on one device.

ComfyUI's ``ModelPatcher`` can load a model partially: modules that do not fit stay on the
offload device and are cast on the fly, which only works for ComfyUI's own layers
(``comfy_cast_weights``). A Hugging Face model has none, so a partial load would leave it split
across devices and its forward would fail (or, with newer ComfyUI's dynamic VRAM, be driven by
machinery written for ComfyUI's own layers). :class:`WholeModelPatcher` therefore always loads
the whole model and, when ComfyUI needs memory back, unloads the whole model.

Device policy (:func:`run_devices`): ``cpu`` always the CPU; ``gpu`` ComfyUI's main device;
``default`` ComfyUI's text-encoder device, except under ``--lowvram``/``--novram`` where the
pack keeps these large models on the CPU (a whole 8B MLLM does not fit the cards those flags are
for; pick ``gpu`` to override). ``--cpu`` makes every choice the CPU.
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.model_patcher
import torch

LOW_VRAM_STATES = ("LOW_VRAM", "NO_VRAM")


class WholeModelPatcher(comfy.model_patcher.ModelPatcher):
    """A ``ModelPatcher`` that never splits its model across devices (no partial load or unload)."""

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False, **kwargs):
        return super().load(
            device_to, lowvram_model_memory=0, force_patch_weights=force_patch_weights, full_load=True, **kwargs
        )

    def partially_unload(self, device_to, memory_to_free=0, *args, **kwargs):
        return 0  # ComfyUI then unloads the whole model (LoadedModel.model_unload falls back to detach)

    def is_dynamic(self):
        return False


def _cpu_only() -> bool:
    return comfy.model_management.get_torch_device().type == "cpu"


def _low_vram() -> bool:
    state = getattr(comfy.model_management, "vram_state", None)
    return getattr(state, "name", "") in LOW_VRAM_STATES


def run_devices(policy: str) -> tuple[torch.device, torch.device]:
    """``(load_device, offload_device)`` for a device policy ``default`` / ``gpu`` / ``cpu``."""
    offload = comfy.model_management.text_encoder_offload_device()
    if policy == "cpu" or _cpu_only():
        return torch.device("cpu"), offload
    if policy == "gpu":
        return comfy.model_management.get_torch_device(), offload
    if _low_vram():
        return torch.device("cpu"), offload
    return comfy.model_management.text_encoder_device(), offload


def manage(module: torch.nn.Module, policy: str, what: str) -> WholeModelPatcher:
    """Put ``module`` on its offload device inside a :class:`WholeModelPatcher`."""
    load_device, offload_device = run_devices(policy)
    module.to(offload_device)
    patcher = WholeModelPatcher(module, load_device=load_device, offload_device=offload_device)
    logging.info("DLA: %s runs on %s (offloaded to %s), loaded whole", what, load_device, offload_device)
    return patcher


def load_whole(patcher) -> None:
    """Load ``patcher`` through ComfyUI's model management, whole (other models are offloaded to make room)."""
    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
