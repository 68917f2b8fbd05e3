"""Tiny random Qwen-VL (Qwen2.5-VL, Qwen3-VL) and Mistral-3 folders in Hugging Face format, built offline; TEST ONLY.

Same construction as the self-test's InternVL (:mod:`dla_core.selftest_models`, whose byte-level
tokenizer and helpers these builders share): ``config.json`` + random weights, the family's
image processor, real Processor class and a chat template shaped like the real one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dla_core.selftest_models import (
    CHAT_SPECIAL_TOKENS,
    INTERNVL_CHAT_TEMPLATE,
    INTERNVL_SPECIAL_TOKENS,
    build_tiny_internvl,
    byte_level_tokenizer,
    bytes_to_unicode,
    image_processor_class,
    save_random,
    text_config,
)

__all__ = [
    "CHAT_SPECIAL_TOKENS",
    "INTERNVL_CHAT_TEMPLATE",
    "INTERNVL_SPECIAL_TOKENS",
    "TINY_BUILDERS",
    "build_tiny_internvl",
    "build_tiny_mistral3",
    "build_tiny_mllm",
    "build_tiny_qwen25vl",
    "build_tiny_qwen3vl",
    "bytes_to_unicode",
]

QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN_VL_SPECIAL_TOKENS = {
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
}


def _qwen_image_processor(processor_class, patch: int, max_pixels: int):
    return processor_class(
        patch_size=patch,
        temporal_patch_size=2,
        merge_size=2,
        min_pixels=(patch * 2) ** 2,
        max_pixels=max_pixels,
        size={"shortest_edge": (patch * 2) ** 2, "longest_edge": max_pixels},
    )


def build_tiny_qwen25vl(
    folder: str | Path,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 3,
    max_pixels: int = 56 * 56,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a tiny random Qwen2.5-VL folder (patch 14, merge 2: one image token per 28x28 px).

    The image processor caps references at ``max_pixels`` (56x56 -> 4 image tokens).
    Returns the folder.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLVideoProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_tokenizer(QWEN_VL_SPECIAL_TOKENS)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in QWEN_VL_SPECIAL_TOKENS.items()}
    heads = 4
    head_dim = hidden_size // heads
    # mrope splits head_dim/2 rotary frequencies over (time, height, width).
    half = head_dim // 2
    mrope_section = [half - 2 * (half // 4), half // 4, half // 4]
    text = text_config(
        tokenizer,
        hidden_size,
        num_layers,
        heads,
        rope_scaling={"type": "mrope", "mrope_section": mrope_section},
        rope_theta=1000000.0,
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(
            depth=2,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=hidden_size,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_start_token"],
        vision_end_token_id=ids["vision_end_token"],
    )
    save_random(Qwen2_5_VLForConditionalGeneration, config, folder, seed, dtype)
    processor = Qwen2_5_VLProcessor(
        image_processor=_qwen_image_processor(image_processor_class("Qwen2VLImageProcessor"), 14, max_pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2),
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return folder


def build_tiny_qwen3vl(
    folder: str | Path,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 3,
    max_pixels: int = 64 * 64,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a tiny random Qwen3-VL folder (patch 16, merge 2, one deepstack layer). Returns the folder."""
    from transformers import (
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_tokenizer(QWEN_VL_SPECIAL_TOKENS)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in QWEN_VL_SPECIAL_TOKENS.items()}
    heads = 4
    head_dim = hidden_size // heads
    half = head_dim // 2
    mrope_section = [half - 2 * (half // 4), half // 4, half // 4]
    text = text_config(
        tokenizer,
        hidden_size,
        num_layers,
        heads,
        head_dim=head_dim,
        rope_scaling={"rope_type": "default", "mrope_section": mrope_section, "mrope_interleaved": True},
        rope_theta=1000000.0,
    )
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=dict(
            depth=2,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=hidden_size,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=16,
            deepstack_visual_indexes=[0],
        ),
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_start_token"],
        vision_end_token_id=ids["vision_end_token"],
    )
    save_random(Qwen3VLForConditionalGeneration, config, folder, seed, dtype)
    processor = Qwen3VLProcessor(
        image_processor=_qwen_image_processor(image_processor_class("Qwen2VLImageProcessor"), 16, max_pixels),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2),
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return folder


MISTRAL3_CHAT_TEMPLATE = (
    "<s>"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ message['content'] }}[/SYSTEM_PROMPT]"
    "{% elif message['role'] == 'user' %}[INST]"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}[IMG]"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}[/INST]"
    "{% else %}{{ message['content'] if message['content'] is string else '' }}</s>{% endif %}"
    "{% endfor %}"
)
MISTRAL3_SPECIAL_TOKENS = {
    "bos_token_text": "<s>",
    "inst_token": "[INST]",
    "inst_end_token": "[/INST]",
    "system_token": "[SYSTEM_PROMPT]",
    "system_end_token": "[/SYSTEM_PROMPT]",
    "image_token": "[IMG]",
    "image_break_token": "[IMG_BREAK]",
    "image_end_token": "[IMG_END]",
}


def build_tiny_mistral3(
    folder: str | Path,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 3,
    longest_edge: int = 56,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a tiny random Mistral-3 folder (``Mistral3ForConditionalGeneration``: Mistral text model + Pixtral).

    Pixtral patch 14, spatial merge 2: one ``[IMG]`` token per 28x28 px, an ``[IMG_BREAK]`` after
    each row and ``[IMG_END]`` last; the image processor caps the longer side at ``longest_edge``
    (56 px -> 2 x 2 image tokens). Chat template shaped like Mistral-Small-3's
    (``<s>[INST]...[IMG]...[/INST]``). Returns the folder.
    """
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_tokenizer(MISTRAL3_SPECIAL_TOKENS)
    heads = 4
    text = text_config(tokenizer, hidden_size, num_layers, heads, head_dim=hidden_size // heads, rope_theta=1e6)
    config = Mistral3Config(
        text_config={**text, "model_type": "mistral", "sliding_window": None},
        vision_config=dict(
            model_type="pixtral",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            head_dim=8,
            image_size=longest_edge,
            patch_size=14,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(MISTRAL3_SPECIAL_TOKENS["image_token"]),
        spatial_merge_size=2,
        vision_feature_layer=-1,
        multimodal_projector_bias=False,
    )
    save_random(Mistral3ForConditionalGeneration, config, folder, seed, dtype)
    image_processor = image_processor_class("PixtralImageProcessor")(
        size={"longest_edge": longest_edge}, patch_size={"height": 14, "width": 14}
    )
    processor = PixtralProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        spatial_merge_size=2,
        chat_template=MISTRAL3_CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return folder


# family name (as in dla_core.spec) -> builder
TINY_BUILDERS = {
    "internvl": build_tiny_internvl,
    "qwen2_5_vl": build_tiny_qwen25vl,
    "qwen3_vl": build_tiny_qwen3vl,
    "mistral3": build_tiny_mistral3,
}


def build_tiny_mllm(family: str, folder: str | Path, seed: int = 0, **kwargs) -> Path:
    """Build a tiny folder of the given family (``internvl``, ``qwen2_5_vl``, ``qwen3_vl``, ``mistral3``)."""
    try:
        builder = TINY_BUILDERS[family]
    except KeyError:
        raise ValueError(f"No tiny builder for family '{family}'; known: {', '.join(TINY_BUILDERS)}") from None
    return builder(folder, seed=seed, **kwargs)
