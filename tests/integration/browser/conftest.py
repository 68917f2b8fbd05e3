"""Fixtures of the browser tests: the real ComfyUI server (`main.py --cpu`) as a subprocess."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def load_server_module():
    """tests/integration/server.py under a private name (ComfyUI owns the module names `server` and `tests`)."""
    name = "dla_integration_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "server.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


dla_server = load_server_module()


@pytest.fixture(scope="session")
def comfy_server(comfyui_path, tiny_models_dir):
    """The ComfyUI HTTP server with this pack and the tiny models; one per session, shared with the browser tests."""
    yield from dla_server.comfy_server_fixture(comfyui_path, tiny_models_dir)
