"""Tiny random vision-language model folders in Hugging Face format, built offline.

Each builder writes a folder that ``transformers`` loads exactly like a real checkpoint:
``config.json`` + random ``model.safetensors`` (``save_pretrained``), a small byte-level
BPE fast tokenizer made with the ``tokenizers`` library (every byte is a token, so any
prompt tokenises; plus the family's special tokens), the family's image processor, its
real Processor class, and a chat template with the same structure as the real model's
(role markers, image placeholders). Forwards take milliseconds on a CPU.

Used by the tests, the CLI self-test and the ComfyUI integration tests.
"""
from __future__ import annotations

from pathlib import Path

import torch

# Chat templates: same structure as the real models' templates (role markers, where the
# image placeholder goes, default system prompt), shortened where only wording differs.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

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

CHAT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
INTERNVL_SPECIAL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
QWEN_VL_SPECIAL_TOKENS = {
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies (CLIP's is the same).

    The 188 printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves; the other 68
    bytes (controls, space, DEL, NBSP, soft hyphen) map to chr(256), chr(257), ... in byte order,
    so space is 'Ġ' and newline 'Ċ'. Written here because transformers keeps it in private modules.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + len(table) - len(printable))
    return table  # GPT-2's order (printable bytes first): the tiny vocabularies' token ids follow it


def _byte_level_tokenizer(extra_special_tokens: dict[str, str]):
    """A fast byte-level BPE tokenizer with no merges (every byte is one token) + special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    byte_chars = list(bytes_to_unicode().values())
    vocab = {char: index for index, char in enumerate(byte_chars)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    specials = CHAT_SPECIAL_TOKENS + list(extra_special_tokens.values())
    backend.add_special_tokens(specials)
    # InternVL3 and Qwen-VL checkpoints all ship a Qwen2 fast tokenizer.
    return Qwen2TokenizerFast(
        tokenizer_object=backend,
        model_input_names=["input_ids", "attention_mask"],
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=dict(extra_special_tokens),
        model_max_length=32768,
    )


def _image_processor_class(name: str):
    """The torch (torchvision) image processor: ``<name>Fast`` in transformers 4.x, ``<name>`` in transformers 5
    (which dropped the suffix and deprecates the old name)."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return getattr(transformers, name if major >= 5 else name + "Fast")


def _text_config(tokenizer, hidden_size: int, num_layers: int, heads: int, **extra) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,  # None (the tokenizer has none), not the family's default id
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def _save_random(model_class, config, folder: Path, seed: int, dtype: torch.dtype) -> None:
    torch.manual_seed(seed)
    model = model_class(config).eval().to(dtype)
    model.save_pretrained(folder, safe_serialization=True)


def build_tiny_internvl(
    folder: str | Path,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 3,
    image_size: int = 56,
    max_tiles: int = 2,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a tiny random InternVL (transformers-native, ``model_type: internvl``) folder.

    Vision tiles are ``image_size`` px (patch 14, pixel shuffle 0.5), so one tile gives
    ``(image_size/14)**2 / 4`` image tokens (4 for 56 px). The processor tiles by aspect
    ratio up to ``max_tiles`` tiles plus a thumbnail, as InternVL3 does at 448 px / 12 tiles.
    Returns the folder.
    """
    from transformers import (
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _byte_level_tokenizer(INTERNVL_SPECIAL_TOKENS)
    patch = 14
    image_seq_length = (image_size // patch) ** 2 // 4
    config = InternVLConfig(
        vision_config=dict(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=[image_size, image_size],
            patch_size=[patch, patch],
            use_mean_pooling=True,
        ),
        text_config=dict(model_type="qwen2", **_text_config(tokenizer, hidden_size, num_layers, heads=4)),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=image_seq_length,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        # like the text config: transformers 5 reads the top-level flag and warns about an untied lm_head otherwise
        tie_word_embeddings=False,
    )
    _save_random(InternVLForConditionalGeneration, config, folder, seed, dtype)
    image_processor = _image_processor_class("GotOcr2ImageProcessor")(
        size={"height": image_size, "width": image_size},
        crop_to_patches=True,
        min_patches=1,
        max_patches=max_tiles,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )
    video_processor = InternVLVideoProcessor(size={"height": image_size, "width": image_size})
    processor = InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_length=image_seq_length,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return folder


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
    tokenizer = _byte_level_tokenizer(QWEN_VL_SPECIAL_TOKENS)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in QWEN_VL_SPECIAL_TOKENS.items()}
    heads = 4
    head_dim = hidden_size // heads
    # mrope splits head_dim/2 rotary frequencies over (time, height, width).
    half = head_dim // 2
    mrope_section = [half - 2 * (half // 4), half // 4, half // 4]
    text = _text_config(
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
    _save_random(Qwen2_5_VLForConditionalGeneration, config, folder, seed, dtype)
    processor = Qwen2_5_VLProcessor(
        image_processor=_qwen_image_processor(_image_processor_class("Qwen2VLImageProcessor"), 14, max_pixels),
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
    tokenizer = _byte_level_tokenizer(QWEN_VL_SPECIAL_TOKENS)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in QWEN_VL_SPECIAL_TOKENS.items()}
    heads = 4
    head_dim = hidden_size // heads
    half = head_dim // 2
    mrope_section = [half - 2 * (half // 4), half // 4, half // 4]
    text = _text_config(
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
    _save_random(Qwen3VLForConditionalGeneration, config, folder, seed, dtype)
    processor = Qwen3VLProcessor(
        image_processor=_qwen_image_processor(_image_processor_class("Qwen2VLImageProcessor"), 16, max_pixels),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2),
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return folder


# family name (as in dla_core.spec) -> builder
TINY_BUILDERS = {
    "internvl": build_tiny_internvl,
    "qwen2_5_vl": build_tiny_qwen25vl,
    "qwen3_vl": build_tiny_qwen3vl,
}


def build_tiny_mllm(family: str, folder: str | Path, seed: int = 0, **kwargs) -> Path:
    """Build a tiny folder of the given family (``internvl``, ``qwen2_5_vl``, ``qwen3_vl``)."""
    try:
        builder = TINY_BUILDERS[family]
    except KeyError:
        raise ValueError(f"No tiny builder for family '{family}'; known: {', '.join(TINY_BUILDERS)}") from None
    return builder(folder, seed=seed, **kwargs)
