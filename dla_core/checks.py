"""Shared input checks and the size limits of the pack (one place, used by the nodes, the CLI and the pipeline).

Every check raises :class:`DLAInputError` with a message that names the input and says how to fix it.
The size limits guard against work that would exhaust memory or run for hours by mistake (a pasted book
as prompt, a video's frames as references); each has a documented default and an environment variable
that raises it (read on every call, so no restart is needed).
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Iterable

from .errors import DLAInputError

# name of the environment variable -> default; README "Limits" lists them
PROMPT_TOKENS_ENV = "DLA_MAX_PROMPT_TOKENS"
DEFAULT_MAX_PROMPT_TOKENS = 1024  # tokens of the instruction itself (the chat template and images come on top)
REFERENCES_ENV = "DLA_MAX_REFERENCES"
DEFAULT_MAX_REFERENCES = 16  # reference images per prompt (each costs hundreds of MLLM tokens)
BATCH_ENV = "DLA_MAX_BATCH"
DEFAULT_MAX_BATCH = 16  # prompts encoded together in one MLLM forward
REFERENCE_PIXELS_ENV = "DLA_MAX_REFERENCE_PIXELS"
# Pixels of one raw reference image (width x height) before the pack scales it: 8192 x 8192 = 64 Mi. The pack
# never uses more than 16 megapixels of a reference (VAE identity 'megapixels' <= 16, MLLM image_size <= 4096), so
# a larger image only costs memory (a ComfyUI IMAGE is 12 bytes a pixel: 768 MB at this limit, plus the copies the
# checks and conversions make). The limit lets full-resolution phone photos (48-50 MP, 8000 x 6000 and up) through
# and stays under Pillow's own decompression-bomb warning (89.5 MP); scans, panoramas and mistakes are refused.
DEFAULT_MAX_REFERENCE_PIXELS = 8192 * 8192


def env_limit(env: str, default: int) -> int:
    """The positive integer in environment variable ``env``, else ``default``; a bad value is an error."""
    raw = os.environ.get(env)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise DLAInputError(f"Environment variable {env}={raw!r} is not a positive whole number; e.g. {env}={default}.")
    return value


def max_prompt_tokens() -> int:
    return env_limit(PROMPT_TOKENS_ENV, DEFAULT_MAX_PROMPT_TOKENS)


def max_references() -> int:
    return env_limit(REFERENCES_ENV, DEFAULT_MAX_REFERENCES)


def max_batch() -> int:
    return env_limit(BATCH_ENV, DEFAULT_MAX_BATCH)


def max_reference_pixels() -> int:
    return env_limit(REFERENCE_PIXELS_ENV, DEFAULT_MAX_REFERENCE_PIXELS)


def check_prompt_tokens(count: int, what: str = "The prompt") -> None:
    """Raise unless a prompt of ``count`` tokens (the instruction's own, no template or padding) is within the limit.

    The limit is read first, so a bad ``DLA_MAX_PROMPT_TOKENS`` is reported even for a short prompt.
    """
    limit = max_prompt_tokens()
    if count > limit:
        raise DLAInputError(
            f"{what} is {count} tokens long, more than the limit of {limit} tokens. Shorten the "
            f"instruction (a sentence or two is what the DLA was trained on). To allow longer prompts, set the "
            f"environment variable {PROMPT_TOKENS_ENV} (e.g. {PROMPT_TOKENS_ENV}={max(count, 2 * limit)}) before "
            "starting ComfyUI or the command."
        )


def check_image_pixels(where: str, width: int, height: int) -> None:
    """Raise unless a raw reference image of ``width`` x ``height`` pixels is within ``DLA_MAX_REFERENCE_PIXELS``.

    ``where`` names the input (e.g. "reference image 2"); called before the image is converted or scaled.
    """
    limit = max_reference_pixels()
    pixels = int(width) * int(height)
    if pixels > limit:
        side = math.isqrt(limit)
        raise DLAInputError(
            f"{where} is {width}x{height} px ({pixels / 1e6:.1f} megapixels), more than the limit of {limit} pixels "
            f"per reference image ({limit / 1e6:.1f} megapixels, e.g. {side}x{side}). Scale it down first (in ComfyUI: "
            "an 'Upscale Image' (ImageScale) or 'ImageScaleToTotalPixels' node before this one; the pack never uses "
            f"more than 16 megapixels of a reference anyway). To allow larger images, set the environment variable "
            f"{REFERENCE_PIXELS_ENV} (e.g. {REFERENCE_PIXELS_ENV}={pixels}) before starting ComfyUI or the command."
        )


def check_count(what: str, count: int, limit: int, env: str, fix: str) -> None:
    """Raise unless ``count <= limit``; the message names the environment variable that raises the limit."""
    if count > limit:
        raise DLAInputError(
            f"{what}: {count}, more than the limit of {limit}. {fix} "
            f"To allow more, set the environment variable {env} (e.g. {env}={max(count, 2 * limit)}) before "
            "starting ComfyUI or the command."
        )


def finite(name: str, value, low: float | None = None, high: float | None = None, hint: str = "") -> float:
    """``value`` as a float; raises unless it is a real, finite number within ``[low, high]`` (bounds optional)."""
    span = (
        f" between {low:g} and {high:g}"
        if low is not None and high is not None
        else f" of at least {low:g}"
        if low is not None
        else f" of at most {high:g}"
        if high is not None
        else ""
    )
    tail = f" {hint}" if hint else ""
    if isinstance(value, (bool, str)) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise DLAInputError(f"'{name}' must be a number{span}, got {value!r}.{tail}")
    number = float(value)
    if not math.isfinite(number):
        raise DLAInputError(f"'{name}' is {number}, not a finite number; give a number{span}.{tail}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise DLAInputError(f"'{name}' is {number:g}; give a number{span}.{tail}")
    return number


def whole(name: str, value, low: int | None = None, high: int | None = None, hint: str = "") -> int:
    """``value`` as an int; raises unless it is a whole number within ``[low, high]`` (bounds optional)."""
    tail = f" {hint}" if hint else ""
    span = f" between {low} and {high}" if low is not None and high is not None else ""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        else:
            raise DLAInputError(f"'{name}' must be a whole number{span}, got {value!r}.{tail}")
    if (low is not None and value < low) or (high is not None and value > high):
        bound = span or (f" of at least {low}" if low is not None else f" of at most {high}")
        raise DLAInputError(f"'{name}' is {value}; give a whole number{bound}.{tail}")
    return value


def choice(name: str, value, options: Iterable) -> object:
    """``value`` if it is one of ``options``; else an error listing them (older ComfyUI lets any value through)."""
    options = list(options)
    if value not in options:
        shown = ", ".join(map(repr, options[:20])) + (f" ... ({len(options)} in all)" if len(options) > 20 else "")
        raise DLAInputError(
            f"'{name}' is {value!r}, which is not one of the offered values: {shown}. Pick one of them."
        )
    return value


def finite_float(text: str) -> float:
    """``argparse`` type: a finite float (``float`` alone accepts 'nan' and 'inf')."""
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; give an ordinary number such as 1.0")
    return number
