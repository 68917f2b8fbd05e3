"""The tiny random models of the installation self-test (``python -m dla_core generate`` with no model flags).

Built offline in code, written as ordinary Hugging Face / diffusers folders, so the real loaders
read them exactly like real checkpoints:

- :func:`build_tiny_internvl`: a tiny InternVL (transformers-native), with a byte-level BPE fast
  tokenizer made with ``tokenizers`` (every byte is a token, so any prompt tokenises), the real
  image processor and Processor classes and a chat template shaped like InternVL3's;
- :func:`build_tiny_diffusers_flux` / :func:`build_tiny_diffusers_vae`: a diffusers
  ``FluxTransformer2DModel`` / ``AutoencoderKL`` that keep FLUX's interfaces (16 latent channels,
  8x VAE downscale, 2x2 patches, 4096-wide context, 768 pooled, guidance embedding, latent
  scale/shift 0.3611/0.1159) and shrink everything else, so a whole pipeline runs on a CPU in seconds.

Also used by ``python -m dla_core.train.tiny_setup``. The test suite's other tiny builders
(Qwen-VL, ComfyUI-layout FLUX, Qwen-Image, text encoders) live under ``tests/``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .flux.weights import FLUX_DEV_TRANSFORMER_CONFIG, FLUX_VAE_CONFIG

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

CHAT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
INTERNVL_SPECIAL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
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


def byte_level_tokenizer(extra_special_tokens: dict[str, str]):
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


def image_processor_class(name: str):
    """The torch (torchvision) image processor: ``<name>Fast`` in transformers 4.x, ``<name>`` in transformers 5
    (which dropped the suffix and deprecates the old name)."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return getattr(transformers, name if major >= 5 else name + "Fast")


def text_config(tokenizer, hidden_size: int, num_layers: int, heads: int, **extra) -> dict:
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


def save_random(model_class, config, folder: Path, seed: int, dtype: torch.dtype) -> None:
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
    tokenizer = byte_level_tokenizer(INTERNVL_SPECIAL_TOKENS)
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
        text_config=dict(model_type="qwen2", **text_config(tokenizer, hidden_size, num_layers, heads=4)),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=image_seq_length,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        # like the text config: transformers 5 reads the top-level flag and warns about an untied lm_head otherwise
        tie_word_embeddings=False,
    )
    save_random(InternVLForConditionalGeneration, config, folder, seed, dtype)
    image_processor = image_processor_class("GotOcr2ImageProcessor")(
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


# ----------------------------------------------------------------------------- FLUX (diffusers format)

# A FLUX-shaped transformer small enough for a CPU test: head dim 16 = rope axes 4+6+6.
TINY_FLUX_TRANSFORMER_CONFIG = {
    **FLUX_DEV_TRANSFORMER_CONFIG,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "axes_dims_rope": [4, 6, 6],
}

# Same interface (8x downscale, 16 channels, scale/shift), a few thousand parameters.
TINY_FLUX_VAE_CONFIG = {
    **FLUX_VAE_CONFIG,
    "block_out_channels": [8, 8, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 64,
}


def randomize(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """Deterministic small random weights (diffusers zero-inits some output layers)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            if name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
            elif "norm" in name and param.ndim == 1:
                param.copy_(1.0 + torch.randn(param.shape, generator=generator) * 0.01)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def build_tiny_diffusers_flux(folder: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a tiny random diffusers ``FluxTransformer2DModel`` folder and return its path.

    ``overrides`` change config entries (e.g. ``num_layers=2``).
    """
    from diffusers import FluxTransformer2DModel

    folder = Path(folder)
    config = {**TINY_FLUX_TRANSFORMER_CONFIG, **overrides}
    model = FluxTransformer2DModel(**config)
    randomize(model, seed)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_diffusers_vae(folder: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a tiny random diffusers ``AutoencoderKL`` folder (FLUX latent interface)."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    config = {**TINY_FLUX_VAE_CONFIG, **overrides}
    model = AutoencoderKL(**config)
    randomize(model, seed, std=0.1)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
