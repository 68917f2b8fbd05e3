"""Fixtures of the HTTP-server tests: the real ComfyUI server (`main.py --cpu`) as a subprocess."""

from __future__ import annotations

import pytest
from dla_workflow_prompts import load_server_module

dla_server = load_server_module()


@pytest.fixture(scope="session")
def comfy_server(comfyui_path, tiny_models_dir):
    """The ComfyUI HTTP server with this pack and the tiny models; one per session, shared with the browser tests."""
    yield from dla_server.comfy_server_fixture(comfyui_path, tiny_models_dir)
