"""Reference images: validation and conversion to RGB PIL images for the MLLM processor.

Accepts ComfyUI ``IMAGE`` tensors (``[batch, height, width, channels]`` float in 0..1),
single ``[height, width, channels]`` tensors, PIL images, or lists of these. Everything
else, and every image the MLLM cannot read faithfully, raises :class:`DLAInputError`
with a message that says how to fix it. :func:`identity_resolution` is the pixel size a reference is
VAE-encoded at (aspect kept, sides multiples of 16, area capped).
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
from PIL import Image

from .checks import check_image_pixels
from .errors import DLAInputError

MIN_IMAGE_SIDE = 8  # px; below this no vision encoder sees anything useful
IDENTITY_MULTIPLE = 16  # px; FLUX latents are 1/8 of the image and patchified 2x2
MAX_IDENTITY_MEGAPIXELS = 16.0  # beyond this a reference is surely a mistake (and would not fit a GPU)
_RANGE_SLACK = 1e-3  # float images slightly outside 0..1 from resampling are clamped, not refused


def _check_side(height: int, width: int, where: str) -> None:
    if min(height, width) < MIN_IMAGE_SIDE:
        raise DLAInputError(
            f"{where} is {width}x{height} px; references need at least {MIN_IMAGE_SIDE} px per side. "
            "Use a larger reference image (the MLLM resizes it itself)."
        )
    check_image_pixels(where, width, height)  # DLA_MAX_REFERENCE_PIXELS, before any copy or conversion


def check_image_tensor(tensor: torch.Tensor, where: str) -> torch.Tensor:
    """The pack's one check of a reference IMAGE tensor; returns it as [batch, height, width, 3] float in 0..1.

    ``[height, width, 3]`` gains a batch dimension. Raises :class:`DLAInputError` (naming ``where``) for
    wrong shapes, empty batches, grayscale, alpha, sides under :data:`MIN_IMAGE_SIDE`, more pixels than
    ``DLA_MAX_REFERENCE_PIXELS`` (:func:`~dla_core.checks.check_image_pixels`), integer dtypes,
    NaN/inf and values outside 0..1 (beyond a small resampling slack).
    """
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4:
        raise DLAInputError(
            f"{where} has shape {tuple(tensor.shape)}; expected an IMAGE tensor [batch, height, width, channels]. "
            "Connect an IMAGE output (e.g. Load Image) to the reference input."
        )
    if tensor.shape[0] == 0:
        raise DLAInputError(f"{where} is an empty image batch. Connect at least one reference image.")
    channels = tensor.shape[-1]
    if channels == 1:
        raise DLAInputError(
            f"{where} is grayscale (1 channel). Convert it to RGB first (e.g. an 'Image to RGB' node), "
            "the MLLM reads 3-channel color images."
        )
    if channels == 4:
        raise DLAInputError(
            f"{where} has an alpha channel (RGBA). Composite it onto a background (e.g. 'Join Image with Alpha' "
            "over a solid color) or load an RGB image; the MLLM reads RGB only."
        )
    if channels != 3:
        raise DLAInputError(
            f"{where} has {channels} channels and shape {tuple(tensor.shape)}; expected [batch, height, width, 3] RGB. "
            "Images with channels first ([batch, 3, height, width]) must be permuted to channels last."
        )
    _check_side(int(tensor.shape[1]), int(tensor.shape[2]), where)
    if not tensor.is_floating_point():
        raise DLAInputError(f"{where} has dtype {tensor.dtype}; IMAGE tensors are floats in 0..1.")
    values = tensor.detach().to("cpu", torch.float32)
    if not torch.isfinite(values).all():
        raise DLAInputError(f"{where} contains NaN or infinite values. Check the node that produced it.")
    low, high = float(values.min()), float(values.max())
    if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
        raise DLAInputError(
            f"{where} has values in [{low:.3g}, {high:.3g}]; IMAGE tensors must lie in 0..1 "
            "(0..255 images must be divided by 255)."
        )
    return tensor


def _tensor_to_pils(tensor: torch.Tensor, where: str) -> list[Image.Image]:
    check_image_tensor(tensor, where)
    values = tensor.detach().to("cpu", torch.float32)
    if values.ndim == 3:
        values = values.unsqueeze(0)
    array = (values.clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)  # [batch, height, width, 3]
    return [Image.fromarray(frame, mode="RGB") for frame in array]


def _pil_to_rgb(image: Image.Image, where: str) -> Image.Image:
    mode = image.mode
    if mode in ("L", "1", "I", "I;16", "F"):
        raise DLAInputError(
            f"{where} is grayscale (PIL mode {mode}). Convert it to RGB first, the MLLM reads color images."
        )
    has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        raise DLAInputError(
            f"{where} has an alpha channel (PIL mode {mode}). Composite it onto a background "
            "(e.g. image.convert('RGBA') pasted over a solid color) or use an RGB image."
        )
    if mode not in ("RGB", "P", "CMYK", "YCbCr"):
        raise DLAInputError(f"{where} has unsupported PIL mode {mode}; use an RGB image.")
    _check_side(image.height, image.width, where)
    return image.convert("RGB") if mode != "RGB" else image


def to_pil_list(images, name: str = "reference image") -> list[Image.Image]:
    """Turn one or more references into a list of RGB PIL images (one per image).

    ``images``: a PIL image, an IMAGE tensor ``[batch, height, width, 3]`` (each batch item is
    one image) or ``[height, width, 3]``, or a list/tuple of these. Raises
    :class:`DLAInputError` for empty input, grayscale, alpha, too-small, non-finite or
    out-of-range images and for wrong shapes.
    """
    if images is None:
        raise DLAInputError(f"No {name} given. Connect at least one reference IMAGE.")
    items: Iterable = images if isinstance(images, (list, tuple)) else [images]
    result: list[Image.Image] = []
    for index, item in enumerate(items):
        where = f"{name} {index + 1}" if isinstance(images, (list, tuple)) else name
        if isinstance(item, Image.Image):
            result.append(_pil_to_rgb(item, where))
        elif isinstance(item, torch.Tensor):
            result.extend(_tensor_to_pils(item, where))
        elif isinstance(item, np.ndarray):
            result.extend(_tensor_to_pils(torch.from_numpy(item), where))
        else:
            raise DLAInputError(f"{where} is a {type(item).__name__}; expected an IMAGE tensor or a PIL image.")
    if not result:
        raise DLAInputError(f"No {name} given (empty list). Connect at least one reference IMAGE.")
    return result


def reference_frames(images: Iterable, name: str = "reference image") -> list[torch.Tensor]:
    """Every frame of every connected IMAGE (``None`` = not connected), in order, each [1, height, width, 3].

    Each IMAGE goes through :func:`check_image_tensor` (input ``k`` is named "``name`` k").
    """
    frames = []
    for index, image in enumerate(images):
        if image is None:
            continue
        image = check_image_tensor(image, f"{name} {index + 1}")
        frames.extend(image.split(1, dim=0))
    return frames


def resize_for_mllm(image: Image.Image, max_side: int | None = None, pixels: int | None = None) -> Image.Image:
    """Resize (up or down, aspect kept) so the longer side is ``max_side`` or the area is about ``pixels``.

    Exactly one of ``max_side`` / ``pixels`` must be given. Uses bicubic resampling; sides are
    at least 1 px. The model's processor applies its own rounding (e.g. Qwen: multiples of 28).
    """
    if (max_side is None) == (pixels is None):
        raise ValueError("give exactly one of max_side or pixels")
    width, height = image.size
    if max_side is not None:
        if max_side < MIN_IMAGE_SIDE:
            raise DLAInputError(f"Reference resolution {max_side} px is too small; use at least {MIN_IMAGE_SIDE}.")
        scale = max_side / max(width, height)
    else:
        if pixels < MIN_IMAGE_SIDE**2:
            raise DLAInputError(f"Reference resolution {pixels} px² is too small; use at least {MIN_IMAGE_SIDE**2}.")
        scale = math.sqrt(pixels / (width * height))
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if new_size == (width, height):
        return image
    return image.resize(new_size, Image.Resampling.BICUBIC)


def identity_resolution(
    width: int, height: int, megapixels: float, upscale: bool = False, multiple: int = IDENTITY_MULTIPLE
) -> tuple[int, int]:
    """Width and height (px) to encode a ``width`` x ``height`` reference at.

    The aspect ratio is kept; the area is scaled to at most ``megapixels`` million pixels
    (exactly that when ``upscale`` is true, also enlarging small images); each side is then
    rounded to the nearest multiple of ``multiple`` (at least one multiple). ``megapixels``
    0 means no area limit (only the rounding).
    """
    if width < 1 or height < 1:
        raise DLAInputError(f"Reference image is {width}x{height} px; it must have at least 1 px per side.")
    if not (0.0 <= megapixels <= MAX_IDENTITY_MEGAPIXELS) or math.isnan(megapixels):
        raise DLAInputError(
            f"Identity resolution {megapixels} MP is out of range; use 0 (keep size) up to {MAX_IDENTITY_MEGAPIXELS} "
            "MP "
            "(FLUX Kontext-style references are about 1 MP)."
        )
    scale = 1.0
    if megapixels > 0:
        target = megapixels * 1_000_000
        scale = math.sqrt(target / (width * height))
        if not upscale:
            scale = min(scale, 1.0)
    new_width = max(multiple, round(width * scale / multiple) * multiple)
    new_height = max(multiple, round(height * scale / multiple) * multiple)
    return int(new_width), int(new_height)
