"""Issue 11 on the nodes that run ComfyUI's own text encoders (DLAQwenCLIPJointEncode, DLAFlux2TextEncode), in a
real ComfyUI on tiny weights loaded by ComfyUI's own loader: the prompt-length limit counts the prompt's own tokens
(not the chat template, not the padding to 512 of FLUX.2 [klein]) and refuses before the encoder runs; Cancel
(ComfyUI's interrupt flag) stops the encoder at the next decoder layer; a reference image over the pixel limit is
refused before anything runs. After each refusal the same CLIP encodes a good prompt.

FLUX.2's encoders need ComfyUI >= 0.3.72: on the oldest row (0.3.64) their tests assert the node's one-line
"needs ComfyUI >= ..." error instead.
"""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from dla_harness import pack_module
from tiny_flux2 import comfy_has_flux2_text_encoders

from dla_tiny.cache import cached_build
from dla_tiny.flux2_text_encoders import (
    COMFY_MISTRAL3_OPTIONS,
    COMFY_QWEN3_OPTIONS,
    build_tiny_mistral3_te,
    build_tiny_qwen3_4b_te,
)
from dla_tiny.qwen_image import COMFY_TE_MODEL_OPTIONS_KEY, TINY_TE_CONFIG, build_tiny_qwen25vl_te

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPT = "a red fox sitting on a mossy rock, morning light"
LONG_PROMPT = " ".join(["fox"] * 40)  # longer than PROMPT in every tokenizer (the tiny Mistral's is byte-level)
ENCODERS = ("mistral3", "qwen3", "qwen_image")  # FLUX.2 [dev], FLUX.2 [klein] 4B, Qwen-Image's Qwen2.5-VL


def model_management():
    return importlib.import_module("comfy.model_management")  # (the name "comfy" is the harness fixture here)


@pytest.fixture(scope="module")
def errors(comfy):
    return pack_module("dla_core.errors")


@pytest.fixture(scope="module")
def clips(comfy, tmp_path_factory):
    """encoder -> a CLIP loaded by ComfyUI's ``load_clip`` (FLUX.2 ones only where this ComfyUI has FLUX.2)."""
    import comfy.sd

    folder = tmp_path_factory.mktemp("text-encoder-limits")
    qwen = cached_build(build_tiny_qwen25vl_te, folder, seed=0, vision=False)
    loaded = {
        "qwen_image": comfy.sd.load_clip(
            [str(qwen)],
            clip_type=comfy.sd.CLIPType.QWEN_IMAGE,
            model_options={COMFY_TE_MODEL_OPTIONS_KEY: TINY_TE_CONFIG},
        )
    }
    if comfy_has_flux2_text_encoders():
        for family, build, options in (
            ("mistral3", build_tiny_mistral3_te, COMFY_MISTRAL3_OPTIONS),
            ("qwen3", build_tiny_qwen3_4b_te, COMFY_QWEN3_OPTIONS),
        ):
            path = cached_build(build, folder)
            loaded[family] = comfy.sd.load_clip(
                [str(path)], clip_type=comfy.sd.CLIPType.FLUX2, model_options=copy.deepcopy(options)
            )
    return loaded


def _encode(encoder: str, clip, prompt: str = PROMPT, **images):
    """Run the pack's node for ``encoder`` on ``clip``: (conditioning, features)."""
    if encoder == "qwen_image":
        return pack_module("nodes.qwen_clip").DLAQwenCLIPJointEncode.execute(clip, prompt, **images).result
    return pack_module("nodes.flux2_clip").DLAFlux2TextEncode.execute(clip, prompt).result


def _clip_or_skip_reason(clips, errors, encoder):
    """The CLIP for ``encoder``; on a ComfyUI without FLUX.2, assert the FLUX.2 node's one clear line, return None."""
    if encoder in clips:
        return clips[encoder]
    with pytest.raises(errors.DLAInputError, match=r"^FLUX\.2 needs ComfyUI >= 0\.3\.72"):
        _encode(encoder, object())
    return None


def _decoder_layers(encoder: str, clip):
    if encoder == "qwen_image":
        return pack_module("nodes.qwen_clip").comfy_qwen_modules(clip)["layers"]
    return pack_module("nodes.flux2_clip").comfy_flux2_modules(clip)["layers"]


class _LayerCounter:
    """Counts decoder-layer forwards; optionally presses Cancel (ComfyUI's interrupt flag) after the first one."""

    def __init__(self, layers, cancel_after_first: bool = False):
        self.ran = 0
        self.cancel_after_first = cancel_after_first
        self.handles = [layer.register_forward_hook(self._after) for layer in layers]

    def _after(self, *_):
        self.ran += 1
        if self.cancel_after_first and self.ran == 1:
            model_management().interrupt_current_processing(True)

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _tokenizers_own_count(clip, text: str) -> int:
    """Tokens of ``text`` from the Hugging Face tokenizer inside ComfyUI's SDTokenizer (internals: this pins them)."""
    sd_tokenizer = getattr(clip.tokenizer, clip.tokenizer.clip)
    ids = sd_tokenizer.tokenizer(text)["input_ids"][sd_tokenizer.tokens_start :]
    return len(ids) - (1 if sd_tokenizer.tokenizer_adds_end_token else 0)


def _then_a_good_prompt_encodes(encoder, clip):
    conditioning, features = _encode(encoder, clip)
    assert conditioning[0][0].isfinite().all() and features.hidden_states.isfinite().all()


# ----------------------------------------------------------------------------- the ComfyUI access this relies on


@pytest.mark.parametrize("encoder", ENCODERS)
def test_prompt_token_count_is_the_tokenizers_own_count(clips, errors, encoder):
    """Pins ``nodes.qwen_clip.prompt_token_count``: ``clip.tokenize(..., llama_template="{}", return_word_ids=True)``
    gives word id 0 to padding and start tokens only, so the count is the tokenizer's own tokenization of the
    prompt, however much ComfyUI pads (FLUX.2 [klein] pads to 512) or wraps it in a template."""
    clip = _clip_or_skip_reason(clips, errors, encoder)
    if clip is None:
        return
    count = pack_module("nodes.qwen_clip").prompt_token_count
    for text in (PROMPT, LONG_PROMPT):
        assert count(clip, text) == _tokenizers_own_count(clip, text) > 0
    assert count(clip, "") == 0
    padded = sum(len(batch) for batch in clip.tokenize(PROMPT)[clip.tokenizer.clip_name])
    assert padded > count(clip, PROMPT)  # what the encoder runs on: template (+ padding) on top
    if encoder == "qwen3":
        assert padded >= 512


# ----------------------------------------------------------------------------- prompt length


@pytest.mark.parametrize("encoder", ENCODERS)
def test_a_prompt_over_the_token_limit_is_refused_before_the_encoder_runs(clips, errors, encoder, monkeypatch):
    clip = _clip_or_skip_reason(clips, errors, encoder)
    if clip is None:
        return
    limit, long = _tokenizers_own_count(clip, PROMPT), _tokenizers_own_count(clip, LONG_PROMPT)
    assert long > limit
    monkeypatch.setenv("DLA_MAX_PROMPT_TOKENS", str(limit))  # PROMPT just fits
    counter = _LayerCounter(_decoder_layers(encoder, clip))
    try:
        with pytest.raises(errors.DLAInputError) as info:
            _encode(encoder, clip, LONG_PROMPT)
        assert counter.ran == 0
        assert str(info.value) == (
            f"The prompt is {long} tokens long, more than the limit of {limit} tokens. Shorten the instruction (a "
            "sentence or two is what the DLA was trained on). To allow longer prompts, set the environment variable "
            f"DLA_MAX_PROMPT_TOKENS (e.g. DLA_MAX_PROMPT_TOKENS={max(long, 2 * limit)}) before starting ComfyUI or "
            "the command."
        )
        # the padded sequence (512 tokens for [klein]) and the template do not count: PROMPT is within the limit
        _then_a_good_prompt_encodes(encoder, clip)
        assert counter.ran == len(_decoder_layers(encoder, clip))
    finally:
        counter.remove()
    monkeypatch.setenv("DLA_MAX_PROMPT_TOKENS", str(long))
    _encode(encoder, clip, LONG_PROMPT)  # allowed by raising the variable


# ----------------------------------------------------------------------------- Cancel


@pytest.mark.parametrize("encoder", ENCODERS)
def test_cancel_stops_the_text_encoder_at_the_next_decoder_layer(clips, errors, encoder):
    clip = _clip_or_skip_reason(clips, errors, encoder)
    if clip is None:
        return
    mm = model_management()
    layers = _decoder_layers(encoder, clip)
    assert len(layers) >= 3
    counter = _LayerCounter(layers, cancel_after_first=True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _encode(encoder, clip, "cancelled while encoding")
        assert counter.ran == 1  # the remaining decoder layers never ran
    finally:
        counter.remove()
        mm.interrupt_current_processing(False)
    assert not mm.processing_interrupted()
    for layer in layers:  # no hook of the pack left behind
        assert not layer._forward_pre_hooks and not layer._forward_hooks
    _then_a_good_prompt_encodes(encoder, clip)


# ----------------------------------------------------------------------------- reference image size


def test_a_qwen_reference_over_the_pixel_limit_is_refused_before_the_encoder_runs(clips, errors, monkeypatch):
    clip = clips["qwen_image"]
    monkeypatch.setenv("DLA_MAX_REFERENCE_PIXELS", str(64 * 64))
    counter = _LayerCounter(_decoder_layers("qwen_image", clip))
    small, big = torch.rand(1, 64, 64, 3), torch.rand(1, 64, 80, 3)
    try:
        with pytest.raises(errors.DLAInputError) as info:
            _encode("qwen_image", clip, PROMPT, image1=small, image3=big)
        assert counter.ran == 0
    finally:
        counter.remove()
    message = str(info.value)
    assert message.startswith(
        "reference image 3 is 80x64 px (0.0 megapixels), more than the limit of 4096 pixels per reference image"
    )
    assert "'Upscale Image' (ImageScale)" in message and "DLA_MAX_REFERENCE_PIXELS=5120" in message
    _then_a_good_prompt_encodes("qwen_image", clip)
