"""ComfyUI's own Krea 2 text encoder (Qwen3-VL-4B, ``CLIPLoader`` type ``krea2``) as the pack's MLLM, jointly.

``DLAKrea2JointEncode`` puts the reference image(s) into Qwen3-VL's chat sequence together with the
instruction, as the paper does, runs ComfyUI's encoder once through its public ``clip.tokenize`` /
``clip.encode_from_tokens_scheduled``, and returns both

* ``CONDITIONING``: Krea 2's native 12-layer conditioning of that sequence (hidden states 2, 5, ..., 35
  per token, what the DiT unpacks). With no image it is exactly ``CLIPTextEncode``'s (the same call);
  add reference latents with Reference Latents (DLA) so that the staged sampler can leave them out of
  stage 1; and
* ``MLLM_FEATURES``: every hidden state (0..36: embeddings, each decoder layer's input, the final
  normed output; Hugging Face's ``hidden_states`` numbering, ComfyUI's ``layer=[...]`` one) of the same
  forward, with text/image masks, for the Dual Layer Aggregation or the Krea 2 layer map.

Joint sequence (the pack's choice; ComfyUI 0.33 has no Krea 2 node that reads images): Krea 2's own
template (its system prompt, ``comfy.text_encoders.krea2.KREA2_TEMPLATE``) with the user turn
``<|vision_start|><|image_pad|><|vision_end|>`` once per reference, then the instruction, as ComfyUI's
Qwen3-VL image template places images. Krea 2 strips the system prompt and ``<|im_start|>user\\n``, so
the conditioning starts at the first image. Krea 2 was trained on text-only conditioning: image tokens
are new to it (see docs/krea2.md).

ComfyUI's Qwen3-VL adds DeepStack visual features to the image positions after decoder layers 0-2, so
hidden states 1-3 of image tokens include them, as in ComfyUI's own intermediate states and the pack's MLLM
Joint Encode on the Hugging Face model (transformers 5's raw ``hidden_states`` record the decoder outputs
before that addition; see tests/test_mllm_encode.py).
"""

from __future__ import annotations

import contextlib
import logging

import torch
from comfy_api.latest import io

from ..dla_core import krea2
from ..dla_core.checks import REFERENCES_ENV, check_count, max_references
from ..dla_core.errors import DLAInputError
from ..dla_core.features import MLLMFeatures
from ..dla_core.images import reference_frames
from ..dla_core.qwen_template import NATIVE_MLLM_SIDE, parse_resolution_list, scaled_size
from .compat import comfy_has_krea2, krea2_missing_message
from .flux2_clip import capture_hidden_states
from .input_checks import checked_inputs
from .progress import check_interrupt, interrupt_between
from .qwen_clip import check_clip_prompt, holds_weights, resize_area
from .types import CATEGORY as ROOT_CATEGORY
from .types import MLLM_FEATURES

CATEGORY = ROOT_CATEGORY + "/Krea 2"
LOAD_HINT = (
    "Load Krea 2's text encoder (Qwen3-VL-4B, e.g. qwen3_vl_4b*.safetensors from models/text_encoders) with a "
    "'Load CLIP' (CLIPLoader) node set to type 'krea2'."
)
VISION_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"  # Qwen-VL chat format: one image
VISION_PROBE_WEIGHTS = ("patch_embed.proj.weight", "merger.linear_fc2.weight")  # first and last of the tower


# ----------------------------------------------------------------------------------------
# The one place that touches ComfyUI's Krea 2 text-encoder internals (down to the next rule).
# tests/integration/test_krea2_clip.py::test_comfy_internals_the_krea2_capture_reads_are_where_expected
# pins every attribute used here, so a ComfyUI refactor fails that test loudly.
# ----------------------------------------------------------------------------------------
def comfy_krea2_modules(clip) -> dict:
    """Locate the parts of ComfyUI's Krea 2 text encoder the capture hooks.

    Returns ``{"transformer", "model", "layers", "visual", "native_layers", "template"}``: the ``Qwen3VL``
    module (called with ``embeds_info``: where image embeddings sit), its language model (``Llama2_``), the
    decoder layers, the vision tower, the layers ComfyUI stacks (``layer=[2, 5, ..., 35]``) and Krea 2's
    conditioning template. Raises :class:`DLAInputError` with the fix on a ComfyUI without Krea 2 or
    another CLIP.
    """
    if not comfy_has_krea2():
        raise DLAInputError(krea2_missing_message())
    import comfy.text_encoders.krea2 as comfy_krea2  # noqa: PLC0415 (ComfyUI only)

    cond_model = getattr(clip, "cond_stage_model", None)
    if cond_model is None or not hasattr(clip, "tokenize"):
        raise DLAInputError(f"The 'clip' input is not a ComfyUI CLIP (got {type(clip).__name__}). {LOAD_HINT}")
    if not isinstance(cond_model, comfy_krea2.Krea2TEModel):
        raise DLAInputError(
            f"This CLIP is a {type(cond_model).__name__} ({getattr(cond_model, 'clip_name', '?')}), not Krea 2's text "
            f"encoder. {LOAD_HINT}"
        )
    encoder = getattr(cond_model, getattr(cond_model, "clip", ""), None)
    transformer = getattr(encoder, "transformer", None)
    model = getattr(transformer, "model", None)
    layers = getattr(model, "layers", None)
    native_layers = getattr(encoder, "layer", None)
    if layers is None or len(layers) == 0 or not isinstance(native_layers, list):
        raise DLAInputError(
            "This ComfyUI's Krea 2 text encoder no longer has the structure this pack reads "
            "(cond_stage_model.clip_qwen3vl_4b.transformer.model.layers, .layer). Update the DLA pack."
        )
    return {
        "transformer": transformer,
        "model": model,
        "layers": layers,
        "visual": getattr(transformer, "visual", None),
        "native_layers": list(native_layers),
        "template": comfy_krea2.KREA2_TEMPLATE,
    }


@contextlib.contextmanager
def capture_embeds_info(modules: dict):
    """Record the ``embeds_info`` (where each image's embeddings sit) of every encoder forward in the block."""
    records: list[list] = []

    def on_transformer(_module, _args, kwargs):
        records.append(list(kwargs.get("embeds_info", []) or []))

    handle = modules["transformer"].register_forward_pre_hook(on_transformer, with_kwargs=True)
    try:
        yield records
    finally:
        handle.remove()


def check_vision_tower(modules: dict) -> None:
    """Raise :class:`DLAInputError` when the encoder cannot see images (no tower, or a file without its weights)."""
    visual = modules["visual"]
    fix = "Reference images need Qwen3-VL's vision tower: use a text encoder file that holds it, or connect no images."
    if visual is None:
        raise DLAInputError("This Krea 2 text encoder has no vision tower. " + fix)
    for name in VISION_PROBE_WEIGHTS:
        try:
            weight = visual.get_parameter(name)
        except AttributeError:
            raise DLAInputError(f"This ComfyUI's Qwen3-VL vision tower has no '{name}'; update the DLA pack.") from None
        if not holds_weights(weight):
            raise DLAInputError("This text encoder's vision tower holds no weights (the file lacks visual.*). " + fix)


# ----------------------------------------------------------------------------------------
def joint_template(template: str, references: int) -> str:
    """Krea 2's template with one vision block per reference at the start of the user turn (before the text)."""
    return template.replace("{}", VISION_BLOCK * references + "{}", 1)


def encode_krea2_joint(
    clip, prompt: str, images: list, mllm_resolution: int = NATIVE_MLLM_SIDE, mllm_resolutions: str = ""
) -> tuple[list, MLLMFeatures]:
    """One Qwen3-VL forward over instruction + references -> (native Krea 2 conditioning, all-layer features)."""
    modules = comfy_krea2_modules(clip)
    check_clip_prompt(clip, prompt)  # DLA_MAX_PROMPT_TOKENS, before anything heavy
    refs = reference_frames(images)  # DLA_MAX_REFERENCE_PIXELS, RGB, size
    check_count(
        "Reference images", len(refs), max_references(), REFERENCES_ENV, "Connect fewer images (or smaller batches)."
    )
    if refs:
        check_vision_tower(modules)
    elif not prompt.strip():
        raise DLAInputError("Give an instruction or at least one reference image: both are empty.")
    sides = parse_resolution_list(mllm_resolutions, len(refs), mllm_resolution, "mllm_resolutions")
    images_vl = []
    for ref, side in zip(refs, sides):
        width, height = scaled_size(ref.shape[2], ref.shape[1], side)
        images_vl.append(resize_area(ref, width, height))
    if refs:
        tokens = clip.tokenize(prompt, images=images_vl, llama_template=joint_template(modules["template"], len(refs)))
    else:
        tokens = clip.tokenize(prompt)  # exactly CLIPTextEncode's call
    check_interrupt()
    with (
        capture_hidden_states(modules) as records,
        capture_embeds_info(modules) as infos,
        interrupt_between(modules["layers"]),  # Cancel: before the next decoder layer
    ):
        conditioning = clip.encode_from_tokens_scheduled(tokens)
    if len(records) != 1 or len(infos) != 1:
        raise DLAInputError(
            f"ComfyUI's Krea 2 text encoder ran {len(records)} forward passes for one prompt (expected 1). CLIP hooks "
            "with keyframes encode once per keyframe: remove them from this CLIP; otherwise update the DLA pack."
        )
    hidden = records[0]  # [1, 37, full tokens, width]
    kept = conditioning[0][0].shape[1]
    dropped = hidden.shape[2] - kept  # Krea 2 drops its system prompt and "<|im_start|>user\n"
    image_mask = torch.zeros(hidden.shape[2], dtype=torch.bool)
    spans = []
    for info in infos[0]:
        if info.get("type") == "image":
            start, size = int(info["index"]), int(info["size"])
            image_mask[start : start + size] = True
            spans.append((start - dropped, size))
    if len(spans) != len(refs) or any(start < 0 for start, _ in spans):
        raise DLAInputError(
            f"{len(refs)} reference image(s) were given but ComfyUI's encoder kept {len(spans)} in the conditioning; "
            "update the DLA pack."
        )
    image_mask = image_mask[dropped:][None]  # [1, tokens]
    image_tokens = int(image_mask.sum())
    features = MLLMFeatures(
        hidden_states=hidden[:, :, dropped:],  # [1, 37, tokens, width], float32
        image_mask=image_mask,
        text_mask=~image_mask,  # every kept token that is not an image token, chat markers included (as natively)
        attention_mask=torch.ones_like(image_mask),
        family=krea2.FAMILY,
        num_layers=hidden.shape[1],
        width=hidden.shape[3],
        layer_indices=tuple(range(hidden.shape[1])),
        prompts=(prompt,),
        model_name="ComfyUI CLIP krea2 (Qwen3-VL-4B)",
        extra={
            "source": "comfy_clip_krea2",
            "target": krea2.TARGET,
            "native_layers": modules["native_layers"],
            "dropped_prefix_tokens": dropped,
            "image_token_spans": spans,  # (start, length) per reference, in kept-token positions
            "image_token_share": image_tokens / kept,
            "mllm_sizes": [tuple(img.shape[2:0:-1]) for img in images_vl],
        },
    )
    logging.info(
        "DLA: Krea 2 joint encode: %d references, %d tokens (%d image tokens, %.0f%%), %d hidden states",
        len(refs),
        kept,
        image_tokens,
        100.0 * image_tokens / kept,
        hidden.shape[1],
    )
    return conditioning, features


class DLAKrea2JointEncode(io.ComfyNode):
    """Krea 2's native conditioning of instruction + references read jointly, plus every layer for the DLA."""

    @classmethod
    def define_schema(cls):
        image_inputs = [
            io.Image.Input(
                f"image{i}",
                optional=True,
                tooltip=f"Reference image(s) {i}. Every frame of a batch is its own reference; they enter the chat in "
                "the order image1 frames, image2 frames, ...",
            )
            for i in range(1, krea2.REFERENCE_INPUTS + 1)
        ]
        return io.Schema(
            node_id="DLAKrea2JointEncode",
            display_name="Krea 2 Joint Encode (DLA)",
            category=CATEGORY,
            description=(
                "Reads the instruction and the reference images together with ComfyUI's own Krea 2 text encoder "
                "(Load CLIP, type krea2: Qwen3-VL-4B), as the paper reads text and subject in one MLLM pass. Outputs "
                "Krea 2's native 12-layer conditioning of that sequence (with no image: equal to CLIP Text Encode) "
                "and the hidden states of every layer for the Dual Layer Aggregation or the Krea 2 layer map. Krea 2 "
                "was trained on text-only conditioning: image tokens in it are the paper's idea, untested by Krea."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="Krea 2's text encoder from 'Load CLIP' with type 'krea2'."),
                io.String.Input(
                    "prompt", multiline=True, dynamic_prompts=True, tooltip="The instruction or subject prompt."
                ),
                io.Int.Input(
                    "mllm_resolution",
                    default=NATIVE_MLLM_SIDE,
                    min=28,
                    max=4096,
                    step=4,
                    tooltip="Each reference is scaled (aspect kept) to about this side squared in pixels before "
                    "Qwen3-VL sees it (16-pixel patches, 2x2 merged: 384 gives about 144 image tokens).",
                ),
                io.String.Input(
                    "mllm_resolutions",
                    default="",
                    optional=True,
                    tooltip="Optional per-reference override: sides in pixels separated by commas, in order, e.g. "
                    "'384, 768'. A shorter list repeats its last value; empty uses mllm_resolution for all.",
                ),
                *image_inputs,
            ],
            outputs=[
                io.Conditioning.Output(
                    display_name="conditioning",
                    tooltip="Native Krea 2 conditioning (12 Qwen3-VL layers per token), no reference latents yet.",
                ),
                MLLM_FEATURES.Output(
                    display_name="mllm_features",
                    tooltip="Hidden states of every Qwen3-VL layer with text/image token masks, for Dual Layer "
                    "Aggregation or the Krea 2 layer map.",
                ),
            ],
        )

    validate_inputs = checked_inputs()

    @classmethod
    def execute(cls, clip, prompt, mllm_resolution=NATIVE_MLLM_SIDE, mllm_resolutions="", **images) -> io.NodeOutput:
        ordered = [images.get(f"image{i}") for i in range(1, krea2.REFERENCE_INPUTS + 1)]
        conditioning, features = encode_krea2_joint(clip, prompt, ordered, mllm_resolution, mllm_resolutions)
        return io.NodeOutput(conditioning, features)
