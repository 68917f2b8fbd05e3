"""TEST-ONLY ComfyUI custom nodes: ComfyUI's CLIPLoader / DualCLIPLoader that build tiny text encoders.

ComfyUI builds text encoders from fixed configs whatever the file holds (Qwen2.5-VL-7B for
type qwen_image, a 4.7B T5-XXL for type flux, Mistral-Small-3 24B / Qwen3-4B for type flux2),
so a workflow that loads the tiny test files
through the stock loaders would build full-size models. ``comfy.sd.load_clip`` honours
``model_options["<model_name>_model_config"]`` (comfy/sd1_clip.py; for CLIP-L files ComfyUI
builds that entry from ``model_options["model_config"]``), which the stock nodes never pass.
These nodes run the stock nodes' own ``load_clip`` with those options added (the tiny
configs of tests/lib/dla_tiny), nothing else changed.

The run-on-tiny-models tests load this package into their ComfyUI with ComfyUI's own
custom-node loader and rewrite a workflow's CLIPLoader / DualCLIPLoader nodes to these ids.
It is never part of the pack (the pack's ``__init__`` does not import it).
"""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path

import comfy.sd

import nodes as comfy_nodes

_REPO_ROOT = Path(__file__).resolve().parents[4]
for _path in (_REPO_ROOT, _REPO_ROOT / "tests" / "lib"):  # dla_core; the test-only dla_tiny
    if str(_path) not in sys.path:
        sys.path.append(str(_path))

from dla_tiny.flux2_text_encoders import COMFY_MISTRAL3_OPTIONS, COMFY_QWEN3_OPTIONS  # noqa: E402
from dla_tiny.flux_text_encoders import COMFY_MODEL_OPTIONS as _FLUX_TE_OPTIONS  # noqa: E402
from dla_tiny.krea2 import COMFY_KREA2_TE_OPTIONS  # noqa: E402
from dla_tiny.qwen_image import COMFY_TE_MODEL_OPTIONS_KEY, DIT_READY_TE_CONFIG  # noqa: E402

# Qwen2.5-VL: the tiny config whose output fits the Qwen-Image DiT (3584 wide); FLUX: CLIP-L + T5;
# FLUX.2 (type flux2): Mistral-3 ([dev]) and Qwen3-4B ([klein]), narrow past their real widths.
TINY_TEXT_ENCODER_OPTIONS = {
    COMFY_TE_MODEL_OPTIONS_KEY: dict(DIT_READY_TE_CONFIG),
    **_FLUX_TE_OPTIONS,
    **COMFY_MISTRAL3_OPTIONS,
    **COMFY_QWEN3_OPTIONS,
    **COMFY_KREA2_TE_OPTIONS,  # Krea 2 (type krea2): Qwen3-VL-4B, narrow past its real width
}
# stock node id -> the test-only id that replaces it in a rewritten workflow
SUBSTITUTES = {"CLIPLoader": "DLATestTinyCLIPLoader", "DualCLIPLoader": "DLATestTinyDualCLIPLoader"}


@contextlib.contextmanager
def tiny_text_encoder_options():
    """Within the block, ``comfy.sd.load_clip`` also receives the tiny text-encoder configs."""
    original = comfy.sd.load_clip

    def load_clip(*args, model_options=None, **kwargs):
        tiny = copy.deepcopy(TINY_TEXT_ENCODER_OPTIONS)  # ComfyUI adds keys to these dicts
        return original(*args, model_options={**(model_options or {}), **tiny}, **kwargs)

    comfy.sd.load_clip = load_clip
    try:
        yield
    finally:
        comfy.sd.load_clip = original


class DLATestTinyCLIPLoader(comfy_nodes.CLIPLoader):
    """TEST ONLY: ComfyUI's CLIPLoader building the tiny text-encoder configs."""

    CATEGORY = "testing/dla"

    def load_clip(self, *args, **kwargs):
        with tiny_text_encoder_options():
            return super().load_clip(*args, **kwargs)


class DLATestTinyDualCLIPLoader(comfy_nodes.DualCLIPLoader):
    """TEST ONLY: ComfyUI's DualCLIPLoader building the tiny text-encoder configs."""

    CATEGORY = "testing/dla"

    def load_clip(self, *args, **kwargs):
        with tiny_text_encoder_options():
            return super().load_clip(*args, **kwargs)


NODE_CLASS_MAPPINGS = {
    "DLATestTinyCLIPLoader": DLATestTinyCLIPLoader,
    "DLATestTinyDualCLIPLoader": DLATestTinyDualCLIPLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DLATestTinyCLIPLoader": "Load CLIP (tiny, TEST ONLY)",
    "DLATestTinyDualCLIPLoader": "DualCLIPLoader (tiny, TEST ONLY)",
}
