"""TEST-ONLY tiny random models, built offline in code (never shipped, never downloaded).

``tests/conftest.py`` puts ``tests/lib`` on ``sys.path`` (ComfyUI owns the top-level name ``tests``),
so test files import this package as ``dla_tiny``:

- :mod:`.mllm`: Qwen2.5-VL / Qwen3-VL / Mistral-3 folders (InternVL comes from :mod:`dla_core.selftest_models`);
- :mod:`.flux`: FLUX.1 transformer / VAE / LoRA files in ComfyUI's (BFL) layout;
- :mod:`.flux_text_encoders`: CLIP-L and T5-XXL files for ComfyUI's loaders;
- :mod:`.flux2_text_encoders`: FLUX.2's Mistral-3 and Qwen3-4B text encoders for ComfyUI's loader (type flux2);
- :mod:`.qwen_image`: Qwen-Image text encoder (Qwen2.5-VL), DiT and VAE files;
- :mod:`.files`: the safetensors writer they share.
"""

from __future__ import annotations

import importlib

__all__ = [
    "TINY_BUILDERS",
    "build_tiny_internvl",
    "build_tiny_mistral3",
    "build_tiny_mllm",
    "build_tiny_qwen25vl",
    "build_tiny_qwen3vl",
]


def __getattr__(name: str):
    """The MLLM builders load on first use: ``dla_tiny.mllm`` imports ``dla_core``, which scripts that only
    need the ComfyUI-layout files (``dla_tiny.flux``, e.g. bench/gpu_real_scale.py) may not have on their path."""
    if name in __all__:
        return getattr(importlib.import_module(".mllm", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
