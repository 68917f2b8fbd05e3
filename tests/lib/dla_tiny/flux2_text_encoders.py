"""Tiny random FLUX.2 text encoders that ComfyUI's ``CLIPLoader`` (type ``flux2``) detects; TEST ONLY.

* :func:`build_tiny_mistral3_te`: FLUX.2 [dev]'s Mistral-Small-3 24B in the layout of
  ``mistral_3_small_flux2_*.safetensors`` (``model.layers.N...``, plus the ``tekken_model`` tensor
  holding Mistral's tekken tokenizer JSON). ComfyUI's ``detect_te_model`` recognises it by a
  5120-wide ``model.layers.0.post_attention_layernorm.weight`` without ``q_norm``; a file without
  ``model.layers.39`` is the *pruned* FLUX.2 variant ComfyUI runs with 30 layers and no final
  norm. ``pruned=False`` writes 40 layers (the full model, final norm).
* :func:`build_tiny_qwen3_4b_te`: FLUX.2 [klein] 4B's Qwen3-4B (``q_norm`` + 2560 wide).

The hidden width is the real one (detection reads it, and the weights must fit ComfyUI's
modules); everything else is narrow through ComfyUI's own ``model_options`` entries
(:data:`COMFY_MISTRAL3_OPTIONS`, :data:`COMFY_QWEN3_OPTIONS`: 1 attention head of 128, an MLP of
16, and for Mistral a 288-token vocabulary: 32 specials + 256 bytes, in a tekken JSON written
here). Qwen3 reads the tokenizer bundled with ComfyUI (ids up to 151645), so it keeps the real
151936-token embedding (~0.39B parameters, bf16 on disk) and 28 decoder layers (klein reads
layer 27). Files are built once per session and cached under ``$DLA_TINY_MODELS_CACHE`` when
set (:func:`cached_file`). Nothing here imports ComfyUI.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import torch

from .files import write_safetensors

HEAD_DIM = 128  # fixed by ComfyUI's configs

MISTRAL3_WIDTH = 5120
MISTRAL3_PRUNED_LAYERS = 30  # ComfyUI's pruned FLUX.2 encoder
MISTRAL3_FULL_LAYERS = 40
TEKKEN_SPECIALS = 32  # tiny: real tekken files have 1000
TEKKEN_VOCAB = TEKKEN_SPECIALS + 256
# Mistral's special-token ranks that ComfyUI's FLUX.2 tokenizer and template use.
TEKKEN_SPECIAL_NAMES = {
    0: "<unk>",
    1: "<s>",
    2: "</s>",
    3: "[INST]",
    4: "[/INST]",
    10: "[IMG]",
    11: "<pad>",
    12: "[IMG_BREAK]",
    13: "[IMG_END]",
    17: "[SYSTEM_PROMPT]",
    18: "[/SYSTEM_PROMPT]",
}
COMFY_MISTRAL3_OPTIONS = {
    "mistral3_24b_model_config": {
        "vocab_size": TEKKEN_VOCAB,
        "intermediate_size": 16,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
    }
}

QWEN3_4B_WIDTH = 2560
QWEN3_VOCAB = 151936
QWEN3_LAYERS = 28  # FLUX.2 [klein] reads hidden states 9, 18 and 27
COMFY_QWEN3_OPTIONS = {
    "qwen3_4b_model_config": {
        "num_hidden_layers": QWEN3_LAYERS,
        "intermediate_size": 16,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
    }
}


def tiny_tekken_json() -> bytes:
    """A tekken tokenizer JSON: :data:`TEKKEN_SPECIALS` special tokens, then one token per byte."""
    specials = [
        {"rank": rank, "token_str": TEKKEN_SPECIAL_NAMES.get(rank, f"<SPECIAL_{rank}>"), "is_control": True}
        for rank in range(TEKKEN_SPECIALS)
    ]
    vocab = [{"rank": b, "token_bytes": base64.b64encode(bytes([b])).decode("ascii")} for b in range(256)]
    data = {
        "config": {
            "pattern": "",
            "num_vocab_tokens": 256,
            "default_vocab_size": TEKKEN_VOCAB,
            "default_num_special_tokens": TEKKEN_SPECIALS,
            "version": "v7",
        },
        "vocab": vocab,
        "special_tokens": specials,
    }
    return json.dumps(data).encode("utf-8")


def _llama_state(
    generator: torch.Generator, width: int, layers: int, vocab: int, inter: int, qk_norm: bool, final_norm: bool
) -> dict[str, torch.Tensor]:
    def normal(shape, std):
        return torch.empty(shape, dtype=torch.float32).normal_(0.0, std, generator=generator)

    state = {"model.embed_tokens.weight": normal((vocab, width), 1.0)}
    for i in range(layers):
        p = f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj"):
            state[f"{p}.self_attn.{proj}.weight"] = normal((HEAD_DIM, width), 1 / math.sqrt(width))
        state[f"{p}.self_attn.o_proj.weight"] = normal((width, HEAD_DIM), 0.5 / math.sqrt(HEAD_DIM))
        if qk_norm:
            state[f"{p}.self_attn.q_norm.weight"] = torch.ones(HEAD_DIM)
            state[f"{p}.self_attn.k_norm.weight"] = torch.ones(HEAD_DIM)
        state[f"{p}.mlp.gate_proj.weight"] = normal((inter, width), 1 / math.sqrt(width))
        state[f"{p}.mlp.up_proj.weight"] = normal((inter, width), 1 / math.sqrt(width))
        state[f"{p}.mlp.down_proj.weight"] = normal((width, inter), 0.5 / math.sqrt(inter))
        state[f"{p}.input_layernorm.weight"] = torch.ones(width)
        state[f"{p}.post_attention_layernorm.weight"] = torch.ones(width)
    if final_norm:
        state["model.norm.weight"] = torch.ones(width)
    return state


def build_tiny_mistral3_te(path: str | Path, seed: int = 0, pruned: bool = True) -> Path:
    """Write a tiny FLUX.2 [dev] text encoder (bf16 + ``tekken_model``) that ComfyUI detects as Mistral-3."""
    generator = torch.Generator().manual_seed(seed)
    layers = MISTRAL3_PRUNED_LAYERS if pruned else MISTRAL3_FULL_LAYERS
    inter = COMFY_MISTRAL3_OPTIONS["mistral3_24b_model_config"]["intermediate_size"]
    state = _llama_state(generator, MISTRAL3_WIDTH, layers, TEKKEN_VOCAB, inter, qk_norm=False, final_norm=not pruned)
    state = {key: value.to(torch.bfloat16) for key, value in state.items()}
    state["tekken_model"] = torch.frombuffer(bytearray(tiny_tekken_json()), dtype=torch.uint8)
    return write_safetensors(path, state)


def build_tiny_qwen3_4b_te(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny FLUX.2 [klein] 4B text encoder (bf16) that ComfyUI detects as Qwen3-4B."""
    generator = torch.Generator().manual_seed(seed)
    inter = COMFY_QWEN3_OPTIONS["qwen3_4b_model_config"]["intermediate_size"]
    state = _llama_state(generator, QWEN3_4B_WIDTH, QWEN3_LAYERS, QWEN3_VOCAB, inter, qk_norm=True, final_norm=True)
    return write_safetensors(path, {key: value.to(torch.bfloat16) for key, value in state.items()})
