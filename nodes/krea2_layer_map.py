"""Krea 2 Layer Map (DLA): which of its 12 Qwen3-VL layers Krea 2's own text fusion draws on, read from the MODEL.

Krea 2's DiT fuses the 12 tapped hidden states of each token with two transformer blocks across the layer
axis and a learned ``12 -> 1`` projection: the paper's Layerwise Attention Pooling, trained by Krea. This
node runs those two blocks and the projection of the loaded ``MODEL`` on one encoding (the features of
Krea 2 Joint Encode) and reads each tapped layer's share of the fused vector per token with the rollout
the pack's Layer Map uses for a DLA's LAP (:func:`dla_core.krea2.fusion_layer_shares`), averaged over the
text tokens and over the image tokens. Nothing of the model is changed: hooks are added for the one pass
and removed.
"""

from __future__ import annotations

import contextlib

import torch
from comfy_api.latest import io

from ..dla_core import krea2
from ..dla_core.errors import DLAInputError
from ..dla_core.features import MLLMFeatures
from ..dla_core.layer_map import KINDS, MIN_PLOT_SIDE, LayerMap, plot_layer_map, summarize_kind
from .compat import comfy_has_krea2, krea2_missing_message
from .input_checks import checked_inputs
from .krea2_clip import CATEGORY
from .progress import check_interrupt
from .types import MLLM_FEATURES, expect

TOKENS_PER_PASS = 256  # tokens whose 12 layer states go through the blocks at once
SUMMARY_HEAD = "Share of Krea 2's fused text vector drawn from each Qwen3-VL layer (its own text fusion)"


# ----------------------------------------------------------------------------------------
# ComfyUI internals read here: MODEL .model.diffusion_model.txtfusion (comfy.ldm.krea2's
# TextFusionTransformer): .layerwise_blocks[i] (.attn, .attn.qknorm returning (q, k)), .projector,
# and the DiT's .txtlayers / .txtdim. Pinned by
# tests/integration/test_krea2_layer_map.py::test_the_map_reruns_krea2s_own_fusion_exactly.
# ----------------------------------------------------------------------------------------
def krea2_text_fusion(model):
    """The text-fusion module of a Krea 2 ``MODEL``; :class:`DLAInputError` with the fix for any other model."""
    if not comfy_has_krea2():
        raise DLAInputError(krea2_missing_message())
    diffusion_model = getattr(getattr(model, "model", None), "diffusion_model", None)
    fusion = getattr(diffusion_model, "txtfusion", None)
    if fusion is None or not hasattr(fusion, "layerwise_blocks") or not hasattr(fusion, "projector"):
        raise DLAInputError(
            f"The 'model' input is {type(diffusion_model).__name__}, not Krea 2's DiT: connect the MODEL from "
            "'Load Diffusion Model' (UNETLoader) with a Krea 2 checkpoint."
        )
    return fusion, diffusion_model.txtlayers, diffusion_model.txtdim


@contextlib.contextmanager
def capture_block_parts(block):
    """Inside the block, record one layerwise block's ``{"q", "k", "branch"}`` (attention branch output) per call."""
    parts: dict = {}

    def on_qknorm(_module, _args, output):
        parts["q"], parts["k"] = output

    def on_attn(_module, _args, output):
        parts["branch"] = output

    handles = [block.attn.qknorm.register_forward_hook(on_qknorm), block.attn.register_forward_hook(on_attn)]
    try:
        yield parts
    finally:
        for handle in handles:
            handle.remove()


def fusion_shares(fusion, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``items`` ``[n, 12, width]`` (one token's 12 states each) -> ``(shares [n, 12], fused [n, width])``.

    Runs Krea 2's layerwise blocks and projection as its DiT does (per token, across layers) and reads the
    rollout; ``fused`` is the projection's output (what the refiner blocks receive), for checks.
    """
    x = items
    mixings = []
    for block in fusion.layerwise_blocks:
        check_interrupt()
        with capture_block_parts(block) as parts:
            block_input = x
            x = block(x.contiguous(), mask=None)
        mixings.append(krea2.block_mixing(block_input, parts["branch"], krea2.attention_probs(parts["q"], parts["k"])))
    layers = x.shape[1]
    eye = torch.eye(layers, device=x.device, dtype=x.dtype)
    weights = fusion.projector(eye).squeeze(-1)  # [12]: the projection's weight per layer, read through its own op
    terms = x * weights[None, :, None]  # [n, 12, width]
    fused = fusion.projector(x.transpose(1, 2)).squeeze(-1)  # [n, width], as the DiT computes it
    return krea2.fusion_layer_shares(mixings, terms), fused


def krea2_layer_map(model, features: MLLMFeatures) -> LayerMap:
    """Average each kind's per-token shares over one Krea 2 encoding (valid tokens only)."""
    import comfy.model_management  # noqa: PLC0415 (ComfyUI only)

    fusion, txtlayers, txtdim = krea2_text_fusion(model)
    if features.family != krea2.FAMILY or any(layer not in features.layer_indices for layer in krea2.TAP_LAYERS):
        raise DLAInputError(
            f"The features are {features.num_layers} layers of width {features.width} ({features.family}); Krea 2's "
            "text fusion reads Qwen3-VL hidden states 2, 5, ..., 35: connect Krea 2 Joint Encode's mllm_features."
        )
    if (len(krea2.TAP_LAYERS), features.width) != (txtlayers, txtdim):
        raise DLAInputError(
            f"This Krea 2 model fuses {txtlayers} layers of width {txtdim}, but the features are {features.width} "
            "wide: encode with the text encoder of this model (Load CLIP, type krea2)."
        )
    check_interrupt()
    comfy.model_management.load_models_gpu([model])
    device = model.load_device
    dtype = model.model.get_dtype_inference()  # the compute dtype (fp8 weights compute in their cast dtype)
    context = krea2.stack_taps(features.hidden_states, features.layer_indices)  # [batch, tokens, 12 * width]
    per_token = context.reshape(*context.shape[:2], txtlayers, txtdim)  # [batch, tokens, 12, width]
    valid = features.attention_mask.bool()
    shares, tokens = {}, {}
    with torch.inference_mode():
        for kind, mask in (("text", features.text_mask), ("image", features.image_mask)):
            items = per_token[mask.bool() & valid]  # [tokens of this kind, 12, width]
            rows = [
                fusion_shares(fusion, chunk.to(device=device, dtype=dtype))[0].float().cpu()
                for chunk in items.split(TOKENS_PER_PASS)
            ]
            tokens[kind] = int(items.shape[0])
            shares[kind] = torch.cat(rows).mean(dim=0) if rows else None
    if all(value is None for value in shares.values()):
        raise DLAInputError("The MLLM features hold no text and no image tokens: there is nothing to map.")
    return LayerMap(
        layers=krea2.TAP_LAYERS,
        num_layers=features.num_layers,
        shares=shares,
        tokens=tokens,
        title="Krea 2 text fusion",
    )


def summarize_krea2(layer_map: LayerMap) -> str:
    """The map in words: what was measured, then one line per kind of token."""
    return "\n".join([SUMMARY_HEAD] + [summarize_kind(layer_map, kind) for kind in KINDS])


class DLAKrea2LayerMap(io.ComfyNode):
    """Which Qwen3-VL layers Krea 2's own text fusion draws on, for one encoding, as an IMAGE and a summary."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DLAKrea2LayerMap",
            display_name="Krea 2 Layer Map (DLA)",
            category=CATEGORY,
            description=(
                "Reads Krea 2's own text fusion (two blocks that attend across its 12 Qwen3-VL layers per token, "
                "then a learned 12 -> 1 projection: the paper's Layerwise Attention Pooling, trained by Krea) from "
                "the loaded MODEL and draws each tapped layer's share of the fused vector, for text tokens and (with "
                "joint encoding) image tokens, by the same rollout as Layer Map (DLA). The model is not changed."
            ),
            inputs=[
                io.Model.Input("model", tooltip="Krea 2's MODEL from 'Load Diffusion Model'."),
                MLLM_FEATURES.Input(
                    "mllm_features", tooltip="Hidden states from Krea 2 Joint Encode: the encoding the map averages."
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
                    tooltip="Bar charts of the share per tapped Qwen3-VL layer: text tokens above, image tokens below.",
                ),
                io.String.Output(
                    display_name="summary",
                    tooltip="The map in words: per kind of token, the share on the shallow / middle / deep third and "
                    "the strongest layer.",
                ),
            ],
        )

    validate_inputs = checked_inputs()

    @classmethod
    def execute(cls, model, mllm_features, width: int, height: int) -> io.NodeOutput:
        features = expect(mllm_features, MLLMFeatures, "mllm_features", "Krea 2 Joint Encode")
        layer_map = krea2_layer_map(model, features)
        pixels = plot_layer_map(layer_map, width, height)  # [height, width, 3] uint8
        image = torch.from_numpy(pixels).to(dtype=torch.float32).div(255.0)[None]
        return io.NodeOutput(image, summarize_krea2(layer_map))
