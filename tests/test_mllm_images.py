"""Reference image validation and conversion (ComfyUI IMAGE tensors and PIL images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dla_core.errors import DLAInputError
from dla_core.images import resize_for_mllm, to_pil_list


def test_image_batch_becomes_one_rgb_pil_per_item_with_exact_pixels():
    pixels = torch.arange(2 * 10 * 12 * 3, dtype=torch.float32).reshape(2, 10, 12, 3) % 256 / 255  # [B, H, W, C]
    images = to_pil_list(pixels)
    assert [im.size for im in images] == [(12, 10), (12, 10)]
    assert all(im.mode == "RGB" for im in images)
    assert np.array_equal(np.asarray(images[1]), (pixels[1] * 255).round().to(torch.uint8).numpy())


def test_single_hwc_tensor_and_pil_and_lists_are_accepted():
    pil = Image.new("RGB", (16, 16), (1, 2, 3))
    mixed = to_pil_list([pil, torch.zeros(16, 16, 3), torch.ones(2, 16, 16, 3)])
    assert len(mixed) == 4
    assert mixed[0] is pil


def test_palette_image_without_transparency_is_converted_to_rgb():
    palette = Image.new("RGB", (16, 16), (200, 30, 40)).convert("P", palette=Image.Palette.ADAPTIVE)
    (converted,) = to_pil_list(palette)
    assert converted.mode == "RGB" and converted.getpixel((0, 0)) == (200, 30, 40)


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.zeros(0, 16, 16, 3), r"empty image batch"),
        (torch.zeros(1, 16, 16, 1), r"grayscale \(1 channel\).*RGB"),
        (torch.zeros(1, 16, 16, 4), r"alpha channel \(RGBA\).*background"),
        (torch.zeros(1, 3, 16, 16), r"channels first"),
        (torch.zeros(16, 16), r"expected an IMAGE tensor \[batch, height, width, channels\]"),
        (torch.zeros(1, 4, 16, 3), r"4 px per side|16x4 px.*at least 8 px"),
        (torch.full((1, 16, 16, 3), float("nan")), r"NaN or infinite"),
        (torch.full((1, 16, 16, 3), 255.0), r"values in \[255, 255\].*divided by 255"),
        (Image.new("L", (16, 16)), r"grayscale \(PIL mode L\)"),
        (Image.new("RGBA", (16, 16)), r"alpha channel \(PIL mode RGBA\)"),
        (Image.new("LA", (16, 16)), r"alpha channel \(PIL mode LA\)"),
        ("cat.png", r"is a str; expected an IMAGE tensor or a PIL image"),
        (None, r"No reference image given"),
        ([], r"empty list"),
    ],
)
def test_bad_reference_images_explain_the_fix(images, message):
    with pytest.raises(DLAInputError, match=message):
        to_pil_list(images)


def test_palette_image_with_transparency_counts_as_alpha():
    image = Image.new("P", (16, 16))
    image.info["transparency"] = 0
    with pytest.raises(DLAInputError, match=r"alpha channel \(PIL mode P\)"):
        to_pil_list(image)


def test_tiny_resampling_overshoot_is_clamped_not_refused():
    (image,) = to_pil_list(torch.full((1, 16, 16, 3), 1.0005))
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_resize_for_mllm_sets_the_longer_side_keeping_aspect():
    image = Image.new("RGB", (300, 150))
    assert resize_for_mllm(image, max_side=100).size == (100, 50)
    assert resize_for_mllm(image, max_side=600).size == (600, 300)


def test_resize_for_mllm_sets_the_pixel_count_keeping_aspect():
    resized = resize_for_mllm(Image.new("RGB", (400, 100)), pixels=100 * 100)
    assert resized.size == (200, 50)
