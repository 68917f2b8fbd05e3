"""Shared fixtures: tiny random MLLM folders (built offline once per session) and reference images.

Fixtures other test files may use (stable names):
``tiny_internvl_dir``, ``tiny_qwen25vl_dir``, ``tiny_qwen3vl_dir``: session-scoped folders;
``tiny_internvl``, ``tiny_qwen25vl``: session-scoped :class:`dla_core.mllm.LoadedMLLM` (fp32, CPU);
``make_reference``: ``make_reference(width=60, height=44, seed=0)`` -> a random RGB PIL image.
Do not mutate the session-scoped folders; copy them (``shutil.copytree``) to break them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The repository root must be importable as-is (``dla_core``) without installing the pack.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))
# Test-only helpers (tiny model builders ``dla_tiny``, the FLUX schedule oracle, the integration harness
# ``dla_harness``, ``ci_guard``): ComfyUI owns the top-level names ``nodes``, ``server`` and ``tests``, so
# they are imported by their own unique names from tests/lib.
_LIB = _ROOT / "tests" / "lib"
if str(_LIB) not in sys.path:
    sys.path.insert(0, str(_LIB))

# Session-end line with the ComfyUI / library versions the run used (tests/lib/ci_guard.py).
from ci_guard import pytest_terminal_summary  # noqa: E402,F401


@pytest.fixture(scope="session")
def tiny_internvl_dir(tmp_path_factory) -> Path:
    from dla_tiny import build_tiny_internvl

    return build_tiny_internvl(tmp_path_factory.mktemp("mllm") / "tiny-internvl", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen25vl_dir(tmp_path_factory) -> Path:
    from dla_tiny import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("mllm") / "tiny-qwen25vl", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen3vl_dir(tmp_path_factory) -> Path:
    from dla_tiny import build_tiny_qwen3vl

    return build_tiny_qwen3vl(tmp_path_factory.mktemp("mllm") / "tiny-qwen3vl", seed=0)


@pytest.fixture(scope="session")
def tiny_internvl(tiny_internvl_dir):
    from dla_core.mllm import load_mllm

    return load_mllm(tiny_internvl_dir, dtype="fp32")


@pytest.fixture(scope="session")
def tiny_qwen25vl(tiny_qwen25vl_dir):
    from dla_core.mllm import load_mllm

    return load_mllm(tiny_qwen25vl_dir, dtype="fp32")


def _random_image(width: int = 60, height: int = 44, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


@pytest.fixture
def make_reference():
    """Factory: ``make_reference(width=60, height=44, seed=0)`` -> random RGB PIL image."""
    return _random_image
