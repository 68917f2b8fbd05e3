"""ComfyUI's own Qwen2.5-VL (``CLIPLoader`` type ``qwen_image``) as the pack's MLLM.

``DLAQwenCLIPJointEncode`` reads the instruction and any number of reference images jointly,
exactly as Qwen-Image-Edit does (``"Picture k: <image>"`` tags inside Qwen-Image-Edit's chat
template), and returns both

* ``CONDITIONING``: what ComfyUI's ``TextEncodeQwenImageEditPlus`` gives for the same prompt
  and images (no reference latents: add them with ``DLAReferenceLatents`` so that the staged
  sampler can leave them out of stage 1), and
* ``MLLM_FEATURES``: the hidden states of *every* layer of the same single forward pass,
  with text/image masks, for the Dual Layer Aggregation.

No transformers copy of the model is loaded: the fp8/bf16 file ComfyUI already holds runs
once, through ComfyUI's public ``clip.tokenize`` / ``clip.encode_from_tokens_scheduled``.
"""

from __future__ import annotations

import contextlib
import logging

import comfy.utils
import torch
from comfy_api.latest import io

from ..dla_core.checks import check_prompt_tokens
from ..dla_core.errors import DLAInputError
from ..dla_core.features import MLLMFeatures
from ..dla_core.images import reference_frames
from ..dla_core.qwen_template import EDIT_TEMPLATE, NATIVE_MLLM_SIDE, edit_user_text, parse_resolution_list, scaled_size
from .input_checks import checked_inputs
from .progress import check_interrupt, interrupt_between
from .types import CATEGORY as ROOT_CATEGORY
from .types import MLLM_FEATURES

CATEGORY = ROOT_CATEGORY + "/Qwen-Image"
FAMILY = "qwen2_5_vl"
MAX_REFERENCE_INPUTS = 6


# ----------------------------------------------------------------------------------------
# The one place that touches ComfyUI's Qwen2.5-VL text-encoder internals (down to the next rule: its module
# tree, the arguments of the forwards the capture hooks, the vision tower's weights; nodes/flux2_clip.py has
# FLUX.2's). tests/integration/test_qwen_clip.py::test_comfy_internals_the_layer_capture_reads_are_where_expected
# pins every attribute used here, so a ComfyUI refactor fails that test loudly.
# ----------------------------------------------------------------------------------------
def comfy_qwen_modules(clip) -> dict:
    """Locate the parts of ComfyUI's Qwen2.5-VL text encoder that the layer capture hooks.

    Returns ``{"transformer", "layers", "norm", "visual"}``: the ``Qwen25_7BVLI`` module
    (called with ``embeds_info`` that says where image embeddings sit), its decoder layers,
    its final norm and its vision tower (``None`` if absent). Raises :class:`DLAInputError`
    with a fix when ``clip`` is not a Qwen2.5-VL-7B loaded by ``CLIPLoader`` type ``qwen_image``.
    """
    from comfy.text_encoders.qwen_image import QwenImageTokenizer  # noqa: PLC0415 (ComfyUI only)

    load_hint = (
        "Load Qwen2.5-VL-7B (e.g. qwen_2.5_vl_7b_fp8_scaled.safetensors from models/text_encoders) "
        "with a 'Load CLIP' (CLIPLoader) node set to type 'qwen_image'."
    )
    cond_model = getattr(clip, "cond_stage_model", None)
    if cond_model is None or not hasattr(clip, "tokenize"):
        raise DLAInputError(f"The 'clip' input is not a ComfyUI CLIP (got {type(clip).__name__}). {load_hint}")
    encoder = getattr(cond_model, "qwen25_7b", None)
    # Exact class: HunyuanImage's tokenizer subclasses Qwen-Image's but uses another template and layer.
    if encoder is None or type(clip.tokenizer) is not QwenImageTokenizer:
        raise DLAInputError(
            f"This CLIP is a {type(cond_model).__name__} with tokenizer {type(clip.tokenizer).__name__}, "
            f"not Qwen2.5-VL-7B for Qwen-Image. {load_hint}"
        )
    transformer = getattr(encoder, "transformer", None)
    llm = getattr(transformer, "model", None)
    layers = getattr(llm, "layers", None)
    norm = getattr(llm, "norm", None)
    if layers is None or norm is None or len(layers) == 0:
        raise DLAInputError(
            "This ComfyUI's Qwen2.5-VL text encoder no longer has the structure this pack reads "
            "(cond_stage_model.qwen25_7b.transformer.model.layers / .norm). Update the DLA pack."
        )
    return {"transformer": transformer, "layers": layers, "norm": norm, "visual": getattr(transformer, "visual", None)}


def prompt_token_count(clip, prompt: str) -> int:
    """How many tokens ``prompt`` itself is in ``clip``'s tokenizer: no chat template, start token or padding.

    ComfyUI's tokenizers pad (FLUX.2 [klein]'s to at least 512 tokens) and wrap the text in a chat template. The
    public ``clip.tokenize`` takes ``llama_template="{}"`` (the template reduced to the text itself) and, with
    ``return_word_ids=True``, gives each token ``(token, weight, word id)`` with word id 0 for padding and
    start/end tokens. Used by the Qwen2.5-VL and FLUX.2 text-encode nodes for ``DLA_MAX_PROMPT_TOKENS``; pinned
    by tests/integration/test_text_encoder_limits.py::test_prompt_token_count_is_the_tokenizers_own_count.
    """
    tokens = clip.tokenize(prompt, llama_template="{}", return_word_ids=True)
    return sum(1 for batches in tokens.values() for batch in batches for entry in batch if entry[2] != 0)


def check_clip_prompt(clip, prompt) -> None:
    """The prompt is text within ``DLA_MAX_PROMPT_TOKENS`` tokens (its own, template and padding not counted)."""
    if not isinstance(prompt, str):
        raise DLAInputError("The prompt must be text.")
    check_prompt_tokens(prompt_token_count(clip, prompt))


def layer_hidden(output) -> torch.Tensor:
    """The hidden state a decoder layer returned: newer ComfyUI returns ``(x, present_key_value)``."""
    return output[0] if isinstance(output, (tuple, list)) else output


def snapshot(output) -> torch.Tensor:
    """A float32 copy of a layer's hidden state, taken now.

    Newer ComfyUI's decoder layers write their result into their input buffer in place
    (``torch.add(residual, x, out=x)``), so every layer's output is the same tensor object,
    overwritten by the next layer: keeping a reference instead of a copy would store the
    last layer n times. ``copy=True`` also copies when the state is already float32.
    """
    return layer_hidden(output).detach().to(torch.float32, copy=True)


@contextlib.contextmanager
def capture_all_layers(modules: dict):
    """Record, for every forward of the encoder inside the block, all hidden states.

    Yields a list; each forward appends ``{"hidden": [batch, layers, tokens, width],
    "embeds_info": [...]}`` where layer 0 is the input embedding, layer k (1..n-1) the
    output of decoder layer k, and layer n the final *normed* output (Hugging Face's
    ``hidden_states`` convention; layer n is what Qwen-Image uses as conditioning).
    """
    records: list[dict] = []
    current: dict = {}
    handles = []

    def on_transformer(_module, args, kwargs):
        current.clear()
        current.update(embeds_info=list(kwargs.get("embeds_info", []) or []), states=[])

    def on_first_layer(_module, args, kwargs):
        current["states"].append(snapshot(kwargs["x"] if "x" in kwargs else args[0]))

    def on_layer(_module, _args, output):
        current["states"].append(snapshot(output))

    def on_norm(_module, _args, output):
        if "states" in current and len(current["states"]) == len(layers) + 1:
            states = current["states"][:-1] + [snapshot(output)]  # final normed output replaces the last raw one
            records.append({"hidden": torch.stack(states, dim=1), "embeds_info": current["embeds_info"]})
            current.clear()

    layers = modules["layers"]
    try:
        handles.append(modules["transformer"].register_forward_pre_hook(on_transformer, with_kwargs=True))
        handles.append(layers[0].register_forward_pre_hook(on_first_layer, with_kwargs=True))
        handles.extend(layer.register_forward_hook(on_layer) for layer in layers)
        handles.append(modules["norm"].register_forward_hook(on_norm))
        yield records
    finally:
        for handle in handles:
            handle.remove()


VISION_PROBE_WEIGHTS = ("patch_embed.proj.weight", "merger.mlp.2.weight")  # first and last layer of the tower


def holds_weights(weight: torch.Tensor) -> bool:
    """Whether a parameter looks loaded from a file rather than left as ComfyUI allocated it.

    ComfyUI allocates parameters without initialising them; a file without ``visual.*`` keys
    leaves that memory as it was: zeros (fresh pages) or leftovers (absurd magnitudes,
    inf/NaN). Loaded weights are finite, moderate and almost all non-zero (fp8 included).
    """
    values = weight.detach().float()
    if not torch.isfinite(values).all():
        return False
    if values.abs().max() > 1e4:
        return False
    return bool((values != 0).float().mean() > 0.5)


def check_vision_tower(modules: dict) -> None:
    """Raise :class:`DLAInputError` when the encoder cannot see images."""
    visual = modules["visual"]
    fix = (
        "Reference images need Qwen2.5-VL's vision tower: use a text encoder file that includes it "
        "(ComfyUI's qwen_2.5_vl_7b_fp8_scaled.safetensors does), or connect no images."
    )
    if visual is None:
        raise DLAInputError("This Qwen2.5 text encoder has no vision tower. " + fix)
    for name in VISION_PROBE_WEIGHTS:
        try:
            weight = visual.get_parameter(name)
        except AttributeError:
            raise DLAInputError(
                f"This ComfyUI's Qwen2.5-VL vision tower has no '{name}'; update the DLA pack."
            ) from None
        if not holds_weights(weight):
            raise DLAInputError(
                "The vision tower of this Qwen2.5-VL text encoder holds no weights (the file lacks visual.*). " + fix
            )


# ----------------------------------------------------------------------------------------
def resize_area(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[1, H, W, 3] -> [1, height, width, 3] with ComfyUI's "area" resampling, as the native Qwen-Image-Edit nodes."""
    samples = image.movedim(-1, 1)  # [1, 3, H, W]
    return comfy.utils.common_upscale(samples, width, height, "area", "disabled").movedim(1, -1)


def encode_qwen_joint(
    clip, prompt: str, images: list, mllm_resolution: int = NATIVE_MLLM_SIDE, mllm_resolutions: str = ""
) -> tuple[list, MLLMFeatures]:
    """One Qwen2.5-VL forward over Qwen-Image-Edit's template -> (native conditioning, all-layer features)."""
    modules = comfy_qwen_modules(clip)
    check_clip_prompt(clip, prompt)  # DLA_MAX_PROMPT_TOKENS, before anything heavy
    refs = reference_frames(images)  # DLA_MAX_REFERENCE_PIXELS, RGB, size
    if refs:
        check_vision_tower(modules)
    elif not prompt.strip():
        raise DLAInputError("Give an instruction or at least one reference image: both are empty.")
    sides = parse_resolution_list(mllm_resolutions, len(refs), mllm_resolution, "mllm_resolutions")
    images_vl = []
    for ref, side in zip(refs, sides):
        width, height = scaled_size(ref.shape[2], ref.shape[1], side)
        images_vl.append(resize_area(ref, width, height))

    tokens = clip.tokenize(edit_user_text(prompt, len(refs)), images=images_vl, llama_template=EDIT_TEMPLATE)
    check_interrupt()
    with capture_all_layers(modules) as records, interrupt_between(modules["layers"]):  # Cancel: next layer
        conditioning = clip.encode_from_tokens_scheduled(tokens)
    if not records:
        raise DLAInputError("ComfyUI's Qwen2.5-VL ran no forward pass the pack could read; update the DLA pack.")
    hidden = records[0]["hidden"]  # [1, layers, full tokens, width]
    kept = conditioning[0][0].shape[1]
    dropped = hidden.shape[2] - kept  # ComfyUI drops the system prompt and "<|im_start|>user\n"
    image_mask = torch.zeros(hidden.shape[2], dtype=torch.bool)
    spans = []
    for info in records[0]["embeds_info"]:
        if info.get("type") == "image":
            start, size = int(info["index"]), int(info["size"])
            image_mask[start : start + size] = True
            spans.append((start - dropped, size))
    if len(spans) != len(refs):
        raise DLAInputError(
            f"{len(refs)} reference image(s) were given but ComfyUI's encoder placed {len(spans)}; update the DLA pack."
        )
    image_mask = image_mask[dropped:][None]  # [1, tokens]
    features = MLLMFeatures(
        hidden_states=hidden[:, :, dropped:].to(torch.float32),  # [1, layers, tokens, width]
        image_mask=image_mask,
        text_mask=~image_mask,  # every kept token that is not an image token, template markers included
        attention_mask=torch.ones_like(image_mask),
        family=FAMILY,
        num_layers=hidden.shape[1],
        width=hidden.shape[3],
        layer_indices=tuple(range(hidden.shape[1])),
        prompts=(prompt,),
        model_name="ComfyUI CLIP qwen_image",
        extra={
            "source": "comfy_clip_qwen_image",
            "template": "qwen_image_edit",
            "dropped_prefix_tokens": dropped,
            "image_token_spans": spans,  # (start, length) per reference, in kept-token positions
            "mllm_sizes": [tuple(img.shape[2:0:-1]) for img in images_vl],
        },
    )
    logging.info("DLA: Qwen2.5-VL joint encode: %d references, %d tokens, %d layers", len(refs), kept, hidden.shape[1])
    return conditioning, features


class DLAQwenCLIPJointEncode(io.ComfyNode):
    """Qwen-Image-Edit's joint text + reference encoding with ComfyUI's own Qwen2.5-VL, any number of references."""

    @classmethod
    def define_schema(cls):
        image_inputs = [
            io.Image.Input(
                f"image{i}",
                optional=True,
                tooltip=f"Reference image(s) {i}. Every frame of a batch is its own reference; references are tagged "
                "'Picture 1', 'Picture 2', ... in the order image1 frames, image2 frames, ...",
            )
            for i in range(1, MAX_REFERENCE_INPUTS + 1)
        ]
        return io.Schema(
            node_id="DLAQwenCLIPJointEncode",
            display_name="Qwen2.5-VL Joint Encode (DLA)",
            category=CATEGORY,
            description=(
                "Reads the instruction and the reference images jointly with ComfyUI's own Qwen2.5-VL (Load CLIP, type "
                "qwen_image; fp8 files work), in Qwen-Image-Edit's template. Outputs the native Qwen-Image-Edit "
                "conditioning (equal to TextEncodeQwenImageEditPlus with the defaults, without reference latents) and "
                "the hidden states of every layer for the Dual Layer Aggregation. Unlike the native node it takes any "
                "number of references and a resolution per reference."
            ),
            inputs=[
                io.Clip.Input(
                    "clip",
                    tooltip="Qwen2.5-VL-7B loaded by 'Load CLIP' with type 'qwen_image' (e.g. "
                    "qwen_2.5_vl_7b_fp8_scaled.safetensors).",
                ),
                io.String.Input(
                    "prompt",
                    multiline=True,
                    dynamic_prompts=True,
                    tooltip="The edit or subject instruction. Refer to references as 'Picture 1', 'Picture 2', ...",
                ),
                io.Int.Input(
                    "mllm_resolution",
                    default=NATIVE_MLLM_SIDE,
                    min=28,
                    max=4096,
                    step=4,
                    tooltip="Each reference is scaled (aspect kept) to about this side squared in pixels before "
                    "Qwen2.5-VL "
                    "sees it. 384 matches the native node; larger shows the MLLM more detail and costs more tokens.",
                ),
                io.String.Input(
                    "mllm_resolutions",
                    default="",
                    optional=True,
                    tooltip="Optional per-reference override: sides in pixels separated by commas, in Picture order, "
                    "e.g. '384, 768'. A shorter list repeats its last value; empty uses mllm_resolution for all.",
                ),
                *image_inputs,
            ],
            outputs=[
                io.Conditioning.Output(
                    display_name="conditioning",
                    tooltip="Native Qwen-Image-Edit conditioning (no reference latents yet).",
                ),
                MLLM_FEATURES.Output(
                    display_name="mllm_features",
                    tooltip="Hidden states of every Qwen2.5-VL layer with text/image token masks, for Dual Layer "
                    "Aggregation.",
                ),
            ],
        )

    validate_inputs = checked_inputs()

    @classmethod
    def execute(cls, clip, prompt, mllm_resolution=NATIVE_MLLM_SIDE, mllm_resolutions="", **images) -> io.NodeOutput:
        ordered = [images.get(f"image{i}") for i in range(1, MAX_REFERENCE_INPUTS + 1)]
        conditioning, features = encode_qwen_joint(clip, prompt, ordered, mllm_resolution, mllm_resolutions)
        return io.NodeOutput(conditioning, features)
