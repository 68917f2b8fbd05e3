"""Tiny random Krea 2 files in ComfyUI's formats, detected by ComfyUI from the weights; TEST ONLY.

* :func:`build_tiny_krea2_dit`: Krea 2's single-stream DiT (``comfy/ldm/krea2``) in the key layout
  ``UNETLoader`` detects from ``txtfusion.projector.weight``. ComfyUI reads the width from
  ``first.weight`` and the heads as ``blocks.0.attn.wq.weight`` rows / 128, so the tiny DiT is 128
  wide with one head and one block; the text fusion reads 12 layers (the projector's input) of
  ``txtdim`` (``layerwise_blocks.0.prenorm.scale``). Its 20 text heads are fixed, so ``txtdim`` is a
  multiple of 20: 40 for staging tests that feed their own conditioning, 2560 (:data:`TE_WIDTH`)
  for a DiT that reads the tiny text encoder below.
* :func:`build_tiny_krea2_te`: Qwen3-VL-4B in the Hugging Face key layout ComfyUI's ``CLIPLoader``
  (type ``krea2``) takes (``model.language_model.*``, ``model.visual.*``); ``detect_te_model`` sees
  Qwen3-VL from ``model.visual.deepstack_merger_list.0.norm.weight`` and the 4B from the 2560 rows of
  ``model.visual.merger.linear_fc2.weight``. The language model keeps its real width (2560, detection
  and the vision merger need it) and 36 decoder layers (Krea 2 taps hidden state 35) and is narrow
  everywhere else through ComfyUI's own ``model_options`` entry :data:`COMFY_KREA2_TE_OPTIONS` (one
  attention head of 128, an MLP of 16); ComfyUI's bundled tokenizer needs the real 151936-token
  embedding. The vision tower has no override (1024 wide, 24 blocks, DeepStack mergers at 5, 11, 17),
  so it is full size; all but :data:`VISION_RANDOM_BLOCKS` of its blocks are exact identities.

Both builders take ComfyUI's own module trees (built on the ``meta`` device: names and shapes only), so
they need a ComfyUI with Krea 2 importable; weights are seeded random values scaled to keep
activations O(1), every tensor finite, stored as bf16.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .files import write_safetensors

TE_WIDTH = 2560  # Qwen3-VL-4B; fixed by ComfyUI's detection and the vision merger
TE_DECODER_LAYERS = 36
COMFY_KREA2_TE_OPTIONS = {
    "qwen3vl_4b_model_config": {
        "num_hidden_layers": TE_DECODER_LAYERS,
        "intermediate_size": 16,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
    }
}
VISION_RANDOM_BLOCKS = (0, 5)  # block 5 feeds the first DeepStack merger
DIT_WIDTH = 128  # one head of 128: what ComfyUI's detection reads back
DIT_TXT_LAYERS = 12
STAGING_TXT_WIDTH = 40  # 20 fixed text heads of 2


def comfy_has_krea2() -> bool:
    """Whether the imported ComfyUI implements Krea 2 (its DiT module; ComfyUI 0.33 has it)."""
    import importlib.util

    return importlib.util.find_spec("comfy.ldm.krea2") is not None


def _random_state(names_shapes, generator: torch.Generator, rule) -> dict[str, torch.Tensor]:
    state = {}
    for name, shape in names_shapes:
        kind, gain = rule(name, shape)
        if kind == "ones":
            value = torch.ones(shape)
        elif kind == "zeros":
            value = torch.zeros(shape)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
            value = torch.randn(shape, generator=generator) * (gain / math.sqrt(fan_in))
        state[name] = value.to(torch.bfloat16)
    return state


def tiny_krea2_dit_state_dict(seed: int = 0, txtdim: int = STAGING_TXT_WIDTH) -> dict[str, torch.Tensor]:
    """Random Krea 2 DiT weights with ComfyUI's key names (one block, 128 wide, text fusion ``txtdim`` wide)."""
    import comfy.ops
    from comfy.ldm.krea2.model import SingleStreamDiT

    with torch.device("meta"):
        model = SingleStreamDiT(
            features=DIT_WIDTH,
            heads=1,
            kvheads=1,
            layers=1,
            txtdim=txtdim,
            txtlayers=DIT_TXT_LAYERS,
            channels=16,
            patch=2,
            dtype=torch.float32,
            operations=comfy.ops.disable_weight_init,
        )

    def rule(name, shape):
        if name.endswith(".scale"):  # RMSNorm, stored zero-centred: (1 + scale)
            return "zeros", 0.0
        if name.endswith(".bias"):
            return "zeros", 0.0
        if name.endswith("mod.lin") or name.endswith("modulation.lin") or name.startswith("tproj"):
            return "normal", 0.1
        if name == "txtfusion.projector.weight":
            return "normal", math.sqrt(DIT_TXT_LAYERS) / DIT_TXT_LAYERS  # a mix of all 12 layers
        return "normal", 1.0

    generator = torch.Generator().manual_seed(seed)
    shapes = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    return _random_state(shapes, generator, rule)


def build_tiny_krea2_dit(path: str | Path, seed: int = 0, txtdim: int = STAGING_TXT_WIDTH) -> Path:
    """Write :func:`tiny_krea2_dit_state_dict` at ``path``; ``UNETLoader`` detects Krea 2."""
    return write_safetensors(path, tiny_krea2_dit_state_dict(seed, txtdim))


def tiny_krea2_te_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random Qwen3-VL-4B weights (narrow language model, full vision tower) in the HF layout ComfyUI loads."""
    import comfy.ops
    from comfy.text_encoders.qwen3vl import _make_qwen3vl_model

    config = dict(COMFY_KREA2_TE_OPTIONS["qwen3vl_4b_model_config"])
    with torch.device("meta"):
        model = _make_qwen3vl_model("qwen3vl_4b")(config, torch.float32, "meta", comfy.ops.disable_weight_init)

    def rule(name, shape):
        if len(shape) == 1:
            if name.endswith(".bias"):
                return "zeros", 0.0
            return "ones", 0.0  # norms
        if name.startswith("visual.blocks."):
            block = int(name.split(".")[2])
            if name.endswith(("attn.proj.weight", "mlp.linear_fc2.weight")):
                return ("normal", 0.1) if block in VISION_RANDOM_BLOCKS else ("zeros", 0.0)
        if name == "model.embed_tokens.weight":
            return "normal", math.sqrt(shape[1])  # unit-variance embeddings
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            return "normal", 0.5
        return "normal", 1.0

    generator = torch.Generator().manual_seed(seed)
    shapes = [(name, tuple(t.shape)) for name, t in model.state_dict().items() if not name.startswith("model.lm_head")]
    state = _random_state(shapes, generator, rule)
    renamed = {}
    for name, value in state.items():
        if name.startswith("model."):
            renamed["model.language_model." + name[len("model.") :]] = value
        elif name.startswith("visual."):
            renamed["model." + name] = value
        else:
            renamed[name] = value
    return renamed


def build_tiny_krea2_te(path: str | Path, seed: int = 0) -> Path:
    """Write :func:`tiny_krea2_te_state_dict` at ``path``; ``CLIPLoader`` type ``krea2`` detects Qwen3-VL-4B."""
    return write_safetensors(path, tiny_krea2_te_state_dict(seed))
