"""The pack's ComfyUI nodes (V3 schema), one module per concern; registered by the root ``__init__``."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from .dla_nodes import DLAAggregate, DLALoader
from .flux2_clip import DLAFlux2TextEncode
from .identity_nodes import DLAVAEIdentityEncode
from .krea2_clip import DLAKrea2JointEncode
from .krea2_layer_map import DLAKrea2LayerMap
from .layer_map_nodes import DLALayerMap
from .mllm_nodes import DLAMLLMJointEncode, DLAMLLMLoader
from .model_folders import register_model_folders
from .qwen_clip import DLAQwenCLIPJointEncode
from .qwen_identity import DLAReferenceLatents
from .sampler_nodes import DLAStageConditioning, DLAStagedGuider, DLAStagedKSampler
from .staged_advanced import DLAStagedGuiderAdvanced, DLAStagedKSamplerAdvanced

NODES: list[type[io.ComfyNode]] = [
    DLAMLLMLoader,
    DLAMLLMJointEncode,
    DLALoader,
    DLAAggregate,
    DLAVAEIdentityEncode,
    DLAStagedKSampler,
    DLAStagedGuider,
    DLAStageConditioning,
    DLAQwenCLIPJointEncode,
    DLAReferenceLatents,
    DLAFlux2TextEncode,
    DLAStagedKSamplerAdvanced,
    DLAStagedGuiderAdvanced,
    DLALayerMap,
    DLAKrea2JointEncode,
    DLAKrea2LayerMap,
]


class DLASubjectExtension(ComfyExtension):
    """Registers the model folders, then lists the nodes."""

    @override
    async def on_load(self) -> None:
        register_model_folders()

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
