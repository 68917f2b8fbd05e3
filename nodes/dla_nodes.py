"""DLA Loader and Dual Layer Aggregation: MLLM features -> native FLUX CONDITIONING."""

from __future__ import annotations

import os

import comfy.model_management
import torch
from comfy_api.latest import io

from ..dla_core.checkpoint import load_dla
from ..dla_core.dla import strip_padding, target_spec
from ..dla_core.features import MLLMFeatures
from ..dla_core.flux.sampling import DEFAULT_GUIDANCE  # the paper's 2.5 (arXiv 2605.26111); FLUX Kontext's default too
from .input_checks import checked_inputs
from .managed_models import load_whole, manage, run_devices
from .model_fit import check_dla_fits_model
from .model_folders import list_dla_files, resolve_dla_file
from .progress import check_interrupt
from .types import CATEGORY, DLA, MLLM_FEATURES, MLLM_OFF_KEY, DLAHandle, expect

CONDITIONING_DTYPE = torch.float32  # what ComfyUI's text encoders hand to samplers


def load_managed_dla(file_name: str) -> DLAHandle:
    """Load a DLA checkpoint from ``models/dla`` (fp32, offload device) and wrap it in a ModelPatcher."""
    path = resolve_dla_file(file_name)
    _, offload_device = run_devices("default")
    module = load_dla(path, device=offload_device, dtype=torch.float32)
    patcher = manage(module, "default", f"DLA '{os.path.basename(path)}'")
    return DLAHandle(patcher=patcher, module=module, file_name=os.path.basename(path))


class DLALoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DLALoader",
            display_name="DLA Loader",
            category=CATEGORY,
            description=(
                "Loads a Dual Layer Aggregation checkpoint (.safetensors with its config) from ComfyUI/models/dla. "
                "A DLA is trained for one MLLM and one DiT; it also stores the learned 'MLLM off' conditioning the "
                "staged sampler uses in its last stage."
            ),
            inputs=[
                io.Combo.Input(
                    "dla_name",
                    options=list_dla_files(),
                    tooltip="DLA checkpoint in models/dla (made by training or by `python -m dla_core init-dla`).",
                ),
            ],
            outputs=[DLA.Output(display_name="DLA", tooltip="The loaded DLA, for Dual Layer Aggregation.")],
        )

    validate_inputs = checked_inputs()

    @classmethod
    def execute(cls, dla_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_managed_dla(dla_name))


def _to_conditioning_tensor(tensor: torch.Tensor | None) -> torch.Tensor | None:
    if tensor is None:
        return None
    return tensor.detach().to(device=comfy.model_management.intermediate_device(), dtype=CONDITIONING_DTYPE)


def aggregate_to_conditioning(handle: DLAHandle, features: MLLMFeatures, guidance: float) -> list:
    """Run the DLA; return FLUX CONDITIONING carrying the DLA's "MLLM off" conditioning under ``MLLM_OFF_KEY``.

    ``[[tokens [batch, tokens, 4096], {"pooled_output": [batch, 768], "guidance": g,
    MLLM_OFF_KEY: [[null_tokens [batch, null_length, 4096], {"pooled_output": [batch, 768]}]]}]]``
    """
    module = handle.module
    module.check_compatible(features)  # before any weight moves: a mismatch is a user error, not an OOM
    check_interrupt()
    load_whole(handle.patcher)
    check_interrupt()  # loading a large DLA onto the GPU takes a while
    with torch.inference_mode():
        output = module(features, check_interrupt=check_interrupt)  # Cancel stops it between LAP blocks
        null = module.null_conditioning(features.batch_size)
    tokens = _to_conditioning_tensor(strip_padding(output.tokens, output.token_mask))
    null_tokens = _to_conditioning_tensor(strip_padding(null.tokens, null.token_mask))
    off = [[null_tokens, {"pooled_output": _to_conditioning_tensor(null.pooled)}]]
    values = {"pooled_output": _to_conditioning_tensor(output.pooled), MLLM_OFF_KEY: off}
    if target_spec(
        module.config.target
    ).distilled_guidance:  # Qwen-Image takes none: emit what its native encoder emits
        values["guidance"] = guidance
    return [[tokens, values]]


class DLAAggregate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DLAAggregate",
            display_name="Dual Layer Aggregation",
            category=CATEGORY,
            description=(
                "Pools every MLLM layer per token (one Layerwise Attention Pooling for text tokens, one for image "
                "tokens) into FLUX conditioning that replaces the T5/CLIP text encoders. The output is a normal "
                "CONDITIONING: it works with every node that takes one."
            ),
            inputs=[
                DLA.Input(
                    "dla", tooltip="The DLA from DLA Loader; it must be trained for the MLLM that made the features."
                ),
                MLLM_FEATURES.Input("mllm_features", tooltip="Hidden states from MLLM Joint Encode."),
                io.Float.Input(
                    "guidance",
                    default=DEFAULT_GUIDANCE,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    tooltip="FLUX distilled guidance (the paper uses 2.5).",
                ),
                io.Model.Input(
                    "model",
                    optional=True,
                    tooltip="Optional: the diffusion model this conditioning is for. When connected, a DLA made for "
                    "another model (e.g. a FLUX.2 DLA with FLUX.1) is refused here with the fix, instead of failing "
                    "inside the sampler.",
                ),
            ],
            outputs=[
                io.Conditioning.Output(
                    tooltip="FLUX conditioning (tokens + pooled + guidance) that also carries the DLA's 'MLLM off' "
                    "conditioning for the Staged KSampler."
                )
            ],
        )

    validate_inputs = checked_inputs()

    @classmethod
    def execute(cls, dla, mllm_features, guidance: float, model=None) -> io.NodeOutput:
        handle = expect(dla, DLAHandle, "dla", "DLA Loader")
        features = expect(mllm_features, MLLMFeatures, "mllm_features", "MLLM Joint Encode")
        if model is not None:
            check_dla_fits_model(handle.module.config, model)
        return io.NodeOutput(aggregate_to_conditioning(handle, features, guidance))
