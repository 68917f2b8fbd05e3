"""Helpers for the Qwen-Image / staged-advanced integration tests (loaded by path, like server.py)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def pack_package_name() -> str:
    """Name under which ComfyUI's custom-node loader imported this repository."""
    candidates = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        # Only a package works as the parent of ``nodes``: a plain module that happens to be this
        # file (pytest can import the root __init__.py as "__init__" or by the folder's name) must not
        # be picked; the copy ComfyUI's loader imported sits under a custom_nodes/ folder.
        if file and hasattr(module, "__path__") and Path(file).resolve() == REPO_ROOT / "__init__.py":
            candidates.append((0 if "custom_nodes" in Path(file).parts else 1, name))
    if candidates:
        return min(candidates)[1]
    raise RuntimeError("the DLA pack is not loaded as a ComfyUI custom node in this process")


def pack_module(submodule: str):
    """A module of the pack as ComfyUI loaded it, e.g. ``pack_module("nodes.qwen_clip")``."""
    return importlib.import_module(f"{pack_package_name()}.{submodule}")
