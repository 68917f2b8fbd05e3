"""MLLM Loader and MLLM Joint Encode: an HF-format VLM read as ComfyUI-managed model."""

from __future__ import annotations

import comfy.model_management
import torch
from comfy_api.latest import io

from ..dla_core.dtypes import DTYPES
from ..dla_core.errors import DLAInputError
from ..dla_core.images import to_pil_list
from ..dla_core.mllm import LoadedMLLM, encode_joint, load_mllm
from .input_checks import checked_inputs
from .managed_models import load_whole, manage, run_devices
from .model_folders import list_mllm_folders, resolve_mllm_folder
from .progress import check_interrupt, node_progress
from .types import CATEGORY, MLLM, MLLM_FEATURES, MLLMHandle, expect

DTYPE_OPTIONS = ["auto", *DTYPES]  # auto, bf16, fp16, fp32
DEVICE_OPTIONS = ["default", "gpu", "cpu"]
DEFAULT_IMAGE_SIZE = 448  # InternVL3's tile size: one tile per reference


class _ManagedModule(torch.nn.Module):
    """Holds a transformers model for a ModelPatcher, which writes ``.device`` (a read-only property there)."""

    def __init__(self, inner: torch.nn.Module, device: torch.device):
        super().__init__()
        self.inner = inner
        self.device = device


def load_managed_mllm(name: str, dtype: str, device_policy: str) -> MLLMHandle:
    """Load MLLM folder ``name`` on the offload device and wrap it in a ModelPatcher."""
    folder = resolve_mllm_folder(name)
    _, offload_device = run_devices(device_policy)
    return manage_mllm(load_mllm(folder, dtype=dtype, device=offload_device), device_policy)


def manage_mllm(loaded: LoadedMLLM, device_policy: str) -> MLLMHandle:
    """Put a loaded MLLM on the offload device in a whole-model patcher (what the loader outputs; benchmarks too)."""
    _, offload_device = run_devices(device_policy)
    holder = _ManagedModule(loaded.model, offload_device)
    patcher = manage(holder, device_policy, f"MLLM '{loaded.name}' ({loaded.spec.describe()}, {loaded.dtype})")
    return MLLMHandle(patcher=patcher, loaded=loaded)


class DLAMLLMLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DLAMLLMLoader",
            display_name="MLLM Loader (DLA)",
            category=CATEGORY,
            description=(
                "Loads a multimodal LLM (InternVL3 '-hf', Qwen2.5-VL, Qwen3-VL, Mistral-3 for FLUX.2) from a Hugging "
                "Face-format folder in "
                "ComfyUI/models/mllm (or models/LLM). ComfyUI's model management moves it to the GPU only while it "
                "encodes and offloads it before FLUX samples."
            ),
            inputs=[
                io.Combo.Input(
                    "mllm_name",
                    options=list_mllm_folders(),
                    tooltip="Model folder under models/mllm or models/LLM (a folder with config.json, safetensors "
                    "weights, tokenizer and processor files).",
                ),
                io.Combo.Input(
                    "dtype",
                    options=DTYPE_OPTIONS,
                    default="auto",
                    tooltip="Weight precision. auto = the dtype stored in the folder's config (bf16 for "
                    "InternVL3/Qwen-VL).",
                ),
                io.Combo.Input(
                    "device",
                    options=DEVICE_OPTIONS,
                    default="default",
                    tooltip="Where the MLLM runs: default = ComfyUI's text-encoder device, gpu = the main GPU, cpu = "
                    "always the CPU (slow, saves VRAM).",
                ),
            ],
            outputs=[MLLM.Output(display_name="MLLM", tooltip="The loaded MLLM, for MLLM Joint Encode.")],
        )

    validate_inputs = checked_inputs()

    @classmethod
    def execute(cls, mllm_name: str, dtype: str, device: str) -> io.NodeOutput:
        return io.NodeOutput(load_managed_mllm(mllm_name, dtype, device))


def references_from_inputs(images: list) -> list[torch.Tensor]:
    """The connected reference IMAGE batches, validated (RGB, big enough) before any model runs."""
    connected = [image for image in images if image is not None]
    if not connected:
        raise DLAInputError("No reference image connected. Connect at least one IMAGE to 'image'.")
    for index, image in enumerate(connected):
        to_pil_list(image, name="reference image" if index == 0 else f"reference image input {index + 1}")
    return connected


def encode_with_managed_mllm(handle: MLLMHandle, prompt: str, references: list[torch.Tensor], image_size: int):
    """Load the MLLM through model management, encode jointly, return features on the intermediate device."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise DLAInputError(
            "The prompt is empty. Write an instruction, e.g. 'the dog from the picture running on a beach'."
        )
    check_interrupt()
    load_whole(handle.patcher)
    features = encode_joint(handle.loaded, prompt, references, image_size=image_size or None, progress=node_progress())
    return features.to(device=comfy.model_management.intermediate_device())


class DLAMLLMJointEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DLAMLLMJointEncode",
            display_name="MLLM Joint Encode",
            category=CATEGORY,
            description=(
                "Reads the instruction and the reference image(s) together in one MLLM chat turn and keeps the hidden "
                "states of every layer, marking which tokens are text and which are image, for Dual Layer Aggregation."
            ),
            inputs=[
                MLLM.Input("mllm", tooltip="The MLLM from MLLM Loader (DLA)."),
                io.String.Input(
                    "prompt",
                    multiline=True,
                    default="",
                    tooltip="The instruction: what to make of the subject, e.g. 'the dog from the picture running on a "
                    "beach'.",
                ),
                io.Image.Input(
                    "image",
                    tooltip="Reference image(s) of the subject. Every image of a batch is one more reference; RGB only "
                    "(no alpha, no grayscale).",
                ),
                io.Int.Input(
                    "image_size",
                    default=DEFAULT_IMAGE_SIZE,
                    min=0,
                    max=4096,
                    step=1,
                    tooltip="Resolution (px) the MLLM sees each reference at. InternVL3: longer side, 448 = one tile; "
                    "Qwen-VL: about size x size pixels. 0 = the processor's default.",
                ),
                io.Image.Input(
                    "image_2",
                    optional=True,
                    tooltip="Optional extra reference image(s), e.g. of another size than 'image'.",
                ),
                io.Image.Input("image_3", optional=True, tooltip="Optional extra reference image(s)."),
            ],
            outputs=[
                MLLM_FEATURES.Output(
                    display_name="MLLM_FEATURES",
                    tooltip="Hidden states of all MLLM layers with text/image token masks, for Dual Layer Aggregation.",
                )
            ],
        )

    validate_inputs = checked_inputs()

    @classmethod
    def execute(cls, mllm, prompt: str, image, image_size: int, image_2=None, image_3=None) -> io.NodeOutput:
        handle = expect(mllm, MLLMHandle, "mllm", "MLLM Loader (DLA)")
        references = references_from_inputs([image, image_2, image_3])
        return io.NodeOutput(encode_with_managed_mllm(handle, prompt, references, image_size))
