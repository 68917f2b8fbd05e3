"""Qwen-Image-Edit's chat template, reference tagging and resolutions (pure python).

Qwen-Image-Edit-2509/2511 read the instruction and the reference images *jointly* with
Qwen2.5-VL-7B: the user turn is ``"Picture 1: <image> Picture 2: <image> ... <instruction>"``
inside the edit system prompt below, the conditioning is the last hidden state of every
token after the system prompt and the ``<|im_start|>user\\n`` marker (that prefix is
dropped), and the reference images also enter the DiT as VAE latents.

ComfyUI's ``TextEncodeQwenImageEditPlus`` fixes three references, 384x384 pixels of area
for the MLLM and about 1024x1024 for the VAE. The pack's nodes use the same template and
the same scaling rules (so with the defaults their conditioning equals the native one) but
take any number of references and a resolution per reference.

Nothing here imports torch or ComfyUI.
"""

from __future__ import annotations

import math
from typing import Sequence

from . import krea2
from .errors import DLAInputError
from .flux.references import REFERENCE_METHODS as FLUX_REFERENCE_METHODS

# The Qwen-Image-Edit system prompt (Qwen-Image-Edit-2509's, as in diffusers'
# QwenImageEditPlusPipeline and ComfyUI's TextEncodeQwenImageEditPlus). "{}" is the user turn.
EDIT_SYSTEM_PROMPT = (
    "Describe the key features of the input image (color, shape, size, texture, objects, background), "
    "then explain how the user's text instruction should alter or modify the image. Generate a new image "
    "that meets the user's requirements while maintaining consistency with the original input where appropriate."
)
EDIT_TEMPLATE = (
    "<|im_start|>system\n" + EDIT_SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)

VISION_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
PICTURE_TAG = "Picture {}: " + VISION_PLACEHOLDER

# Native TextEncodeQwenImageEditPlus resolutions (area, in pixels, of the scaled reference).
NATIVE_MLLM_SIDE = 384
NATIVE_VAE_SIDE = 1024
VAE_SIZE_MULTIPLE = 8  # native rounds the VAE input to multiples of 8 pixels

# Qwen2.5-VL's vision tower: 14-pixel patches, 2x2 patches merged into one LLM token.
QWEN_VL_PATCH = 14
QWEN_VL_MERGE = 2
QWEN_VL_MIN_PIXELS = 3136
QWEN_VL_MAX_PIXELS = 12845056

# Qwen-Image's DiT: 8x VAE downsampling, 2x2 latent patches per image token.
QWEN_IMAGE_PIXELS_PER_TOKEN = 16

# reference_latents_method each model expects (ComfyUI conditioning key).
MODEL_REFERENCE_METHODS = {
    "qwen_image_edit_2509": "index",
    "qwen_image_edit_2511": "index_timestep_zero",
    "flux_kontext": "offset",
    # Krea 2's DiT (ComfyUI 0.33) has no method of its own: references without one never reach it.
    krea2.TARGET: krea2.REFERENCE_METHODS[0],
}
# Every reference_latents_method name the pack knows: FLUX's three placements plus Qwen-Image-Edit-2511's
# index_timestep_zero (newer ComfyUI), in the order the Qwen node lists them.
REFERENCE_LATENTS_METHODS = (*sorted(FLUX_REFERENCE_METHODS), "index_timestep_zero")


def picture_tags(num_images: int, first_index: int = 1) -> str:
    """``"Picture 1: <vision placeholder>Picture 2: ..."`` for ``num_images`` references."""
    if num_images < 0:
        raise DLAInputError(f"num_images must be 0 or more, got {num_images}.")
    return "".join(PICTURE_TAG.format(first_index + i) for i in range(num_images))


def edit_user_text(prompt: str, num_images: int) -> str:
    """The user turn ComfyUI tokenizes: picture tags of every reference, then the instruction."""
    return picture_tags(num_images) + prompt


def scaled_size(width: int, height: int, side: int, multiple: int = 1) -> tuple[int, int]:
    """Size with the aspect ratio of ``width`` x ``height`` and an area of about ``side``\u00b2 pixels.

    ``multiple=1`` is the native MLLM rule (``round(w * scale)``); ``multiple=8`` the native
    VAE rule (``round(w * scale / 8) * 8``). Sizes never drop below ``multiple`` (or 1).
    """
    if width < 1 or height < 1:
        raise DLAInputError(f"Reference image has size {width}x{height}; it must be at least 1x1 pixel.")
    if side < 1:
        raise DLAInputError(f"Resolution must be a positive number of pixels, got {side}.")
    scale = math.sqrt(side * side / (width * height))
    if multiple == 1:
        return max(1, round(width * scale)), max(1, round(height * scale))
    return (
        max(multiple, round(width * scale / multiple) * multiple),
        max(multiple, round(height * scale / multiple) * multiple),
    )


def qwen_vl_grid(width: int, height: int) -> tuple[int, int]:
    """Patch grid (rows, cols) Qwen2.5-VL's image processor gives an image of this size.

    Sides are rounded to multiples of 28 (patch 14 x merge 2) and the area is kept within
    the processor's min/max pixels, as in Qwen's ``smart_resize``.
    """
    factor = QWEN_VL_PATCH * QWEN_VL_MERGE
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > QWEN_VL_MAX_PIXELS:
        beta = math.sqrt((height * width) / QWEN_VL_MAX_PIXELS)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < QWEN_VL_MIN_PIXELS:
        beta = math.sqrt(QWEN_VL_MIN_PIXELS / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar // QWEN_VL_PATCH, w_bar // QWEN_VL_PATCH


def qwen_vl_image_tokens(width: int, height: int) -> int:
    """LLM tokens one image of this (already scaled) size becomes in Qwen2.5-VL."""
    rows, cols = qwen_vl_grid(width, height)
    return (rows // QWEN_VL_MERGE) * (cols // QWEN_VL_MERGE)


def dit_image_tokens(width: int, height: int) -> int:
    """Image tokens Qwen-Image's (or FLUX's) DiT makes of a latent for ``width`` x ``height`` pixels."""
    return math.ceil(width / QWEN_IMAGE_PIXELS_PER_TOKEN) * math.ceil(height / QWEN_IMAGE_PIXELS_PER_TOKEN)


def parse_resolution_list(text: str, count: int, default: int, name: str) -> list[int]:
    """Per-reference resolutions from ``"384, 768"``: one side per reference, in order.

    Empty text gives ``default`` for every reference; a shorter list repeats its last value.
    """
    text = (text or "").strip()
    if not text:
        return [default] * count
    values = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(float(part))
        except ValueError:
            raise DLAInputError(
                f"{name} '{text}' is not a list of pixel sides: write numbers separated by commas, e.g. '384, 768'."
            ) from None
        if value < 28:
            raise DLAInputError(f"{name} holds {value}; each side must be at least 28 pixels.")
        values.append(value)
    if not values:
        return [default] * count
    if len(values) > count:
        raise DLAInputError(
            f"{name} lists {len(values)} resolutions but only {count} reference image(s) are connected; "
            "give at most one value per reference."
        )
    return values + [values[-1]] * (count - len(values))


def resolve_reference_method(requested: str, model: str, available: Sequence[str]) -> tuple[str, str]:
    """Pick the ``reference_latents_method`` for ``model`` (``"auto"``) or as requested.

    Returns ``(method, note)``; ``note`` is empty unless the method had to be degraded
    because the running ComfyUI lacks it (``available`` lists the methods it knows).
    """
    method = MODEL_REFERENCE_METHODS.get(model, "index") if requested == "auto" else requested
    if method in available:
        return method, ""
    fallback = "index" if "index" in available else available[0]
    note = (
        f"This ComfyUI has no reference_latents_method '{method}' (it knows {', '.join(available)}); "
        f"using '{fallback}'. Update ComfyUI for the method {model.replace('_', ' ')} was trained with."
    )
    return fallback, note
