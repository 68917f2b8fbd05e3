"""Layer Map (DLA): which MLLM layers a DLA draws on, for one encoding, as an IMAGE and a summary."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..dla_core.features import MLLMFeatures
from ..dla_core.layer_map import MIN_PLOT_SIDE, layer_attention, plot_layer_map, summarize
from .managed_models import load_whole
from .progress import check_interrupt
from .types import CATEGORY, DLA, MLLM_FEATURES, DLAHandle, expect


def draw_layer_map(handle: DLAHandle, features: MLLMFeatures, width: int, height: int) -> tuple[torch.Tensor, str]:
    """The DLA's layer map over ``features``: ``(IMAGE [1, height, width, 3] float 0..1, summary text)``."""
    module = handle.module
    module.check_compatible(features)  # before any weight moves, as in aggregate_to_conditioning
    check_interrupt()
    load_whole(handle.patcher)
    with torch.inference_mode():  # Cancel stops it between LAP blocks
        layer_map = layer_attention(module, features, title=handle.file_name, check_interrupt=check_interrupt)
    pixels = plot_layer_map(layer_map, width, height)  # [height, width, 3] uint8
    image = torch.from_numpy(pixels).to(dtype=torch.float32).div(255.0)[None]
    return image, summarize(layer_map)


class DLALayerMap(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DLALayerMap",
            display_name="Layer Map (DLA)",
            category=CATEGORY,
            description=(
                "Draws which MLLM layers a DLA draws on for one encoding: for text tokens and for image tokens, the "
                "share of the LAP's output that comes from each layer (its attention across layers, averaged over "
                "the tokens). Shows whether a trained DLA uses shallow or deep layers."
            ),
            inputs=[
                DLA.Input(
                    "dla", tooltip="The DLA from DLA Loader; it must be trained for the MLLM that made the features."
                ),
                MLLM_FEATURES.Input(
                    "mllm_features", tooltip="Hidden states from MLLM Joint Encode: the encoding the map averages over."
                ),
                io.Int.Input(
                    "width", default=768, min=MIN_PLOT_SIDE, max=4096, step=8, tooltip="Width of the picture in pixels."
                ),
                io.Int.Input(
                    "height",
                    default=512,
                    min=MIN_PLOT_SIDE,
                    max=4096,
                    step=8,
                    tooltip="Height of the picture in pixels.",
                ),
            ],
            outputs=[
                io.Image.Output(
                    display_name="layer_map",
                    tooltip="Bar charts of the share per MLLM layer: text tokens above, image tokens below; the "
                    "shallow / middle / deep thirds are shaded.",
                ),
                io.String.Output(
                    display_name="summary",
                    tooltip="The map in words: per kind of token, the share on the shallow / middle / deep third of "
                    "the layers and the strongest layer.",
                ),
            ],
        )

    @classmethod
    def execute(cls, dla, mllm_features, width: int, height: int) -> io.NodeOutput:
        handle = expect(dla, DLAHandle, "dla", "DLA Loader")
        features = expect(mllm_features, MLLMFeatures, "mllm_features", "MLLM Joint Encode")
        return io.NodeOutput(*draw_layer_map(handle, features, width, height))
