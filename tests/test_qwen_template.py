"""Qwen-Image-Edit template, Picture-k tagging and resolution rules (pure python)."""

from __future__ import annotations

import pytest

from dla_core.errors import DLAInputError
from dla_core.qwen_template import (
    EDIT_TEMPLATE,
    dit_image_tokens,
    edit_user_text,
    parse_resolution_list,
    picture_tags,
    qwen_vl_image_tokens,
    resolve_reference_method,
    scaled_size,
)


def test_picture_tags_number_every_reference_from_one():
    text = picture_tags(5)
    assert [text.count(f"Picture {k}: <|vision_start|><|image_pad|><|vision_end|>") for k in range(1, 6)] == [1] * 5
    assert text.count("<|image_pad|>") == 5


def test_user_text_puts_the_tags_before_the_instruction():
    assert edit_user_text("make it red", 1) == "Picture 1: <|vision_start|><|image_pad|><|vision_end|>make it red"
    assert edit_user_text("make it red", 0) == "make it red"


def test_template_wraps_the_user_turn_in_the_edit_system_prompt():
    filled = EDIT_TEMPLATE.format("X")
    assert filled.startswith("<|im_start|>system\nDescribe the key features of the input image")
    assert filled.endswith("<|im_start|>user\nX<|im_end|>\n<|im_start|>assistant\n")


def test_mllm_scaling_keeps_aspect_and_area_like_the_native_node():
    width, height = scaled_size(1000, 500, 384)
    assert (width, height) == (543, 272)  # round(1000 * s), round(500 * s) with s = sqrt(384^2 / 500000)
    assert abs(width * height - 384 * 384) < 600


def test_vae_scaling_rounds_sides_to_multiples_of_eight():
    width, height = scaled_size(1000, 500, 1024, 8)
    assert width % 8 == 0 and height % 8 == 0
    assert (width, height) == (1448, 728)


def test_native_384_reference_becomes_196_qwen_tokens():
    assert qwen_vl_image_tokens(384, 384) == 196


def test_1024_square_output_is_4096_dit_tokens():
    assert dit_image_tokens(1024, 1024) == 4096


def test_resolution_list_repeats_its_last_value_and_defaults_when_empty():
    assert parse_resolution_list("384, 768", 3, 384, "x") == [384, 768, 768]
    assert parse_resolution_list("", 2, 512, "x") == [512, 512]


@pytest.mark.parametrize("text", ["big", "384, 10"])
def test_bad_resolution_lists_are_rejected_with_a_fix(text):
    with pytest.raises(DLAInputError, match="x"):
        parse_resolution_list(text, 2, 384, "x")


def test_more_resolutions_than_references_is_an_error():
    with pytest.raises(DLAInputError, match="only 1 reference"):
        parse_resolution_list("384, 512", 1, 384, "x")


def test_reference_method_follows_the_model_when_available():
    assert resolve_reference_method(
        "auto", "qwen_image_edit_2511", ("offset", "index", "uxo", "index_timestep_zero")
    ) == ("index_timestep_zero", "")
    assert resolve_reference_method("auto", "flux_kontext", ("offset", "index", "uxo")) == ("offset", "")


def test_missing_reference_method_degrades_to_index_with_a_note():
    method, note = resolve_reference_method("auto", "qwen_image_edit_2511", ("offset", "index", "uxo"))
    assert method == "index"
    assert "index_timestep_zero" in note and "Update ComfyUI" in note
