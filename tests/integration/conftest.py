"""Fixtures of the integration tests: a real ComfyUI, tiny models, this pack loaded as a custom node.

The harness itself is the package ``dla_harness`` (tests/lib); tests import what they build with
(``from dla_harness import Graph, add_dla_pipeline, add_staged_sampler, pack_module``). Fixtures:

* ``comfyui_path`` -- the ComfyUI checkout to test against (``ci_guard.find_comfyui``: ``$COMFYUI_PATH``,
  the ComfyUI whose ``custom_nodes/`` holds this repository, or ``/opt/ComfyUI``); skips with the reason
  when there is none, fails instead under ``CI=true``.
* ``tiny_models_dir`` -- the tiny ``models/`` tree (``dla_harness.tree``), built once per session or reused
  from ``$DLA_TINY_MODELS_CACHE``; ``tiny_names`` -- its file and folder names.
* ``comfy`` -- ComfyUI set up once per session *in this process* (``--cpu``), its built-in and custom
  nodes loaded by its own loader, as a :class:`dla_harness.ComfyRunner`.
* ``graph`` -- an empty :class:`dla_harness.Graph`.
* ``comfy_server`` -- the real HTTP server (``main.py --cpu``, ``dla_harness.server``), one per session,
  shared by the HTTP and the browser tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import ci_guard
import pytest
from dla_harness import (
    ComfyRunner,
    Graph,
    cached_tiny_models_tree,
    find_comfyui,
    foreign_comfy_reason,
    make_comfy_base_directory,
    start_comfy_in_process,
    tiny_flux_width,
)
from dla_harness import server as dla_server
from dla_harness import tiny_names as _tiny_names


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    """The ComfyUI checkout; skips the test with the reason when there is none (fails instead under ``CI=true``)."""
    path, reason = find_comfyui()
    if path is None:
        ci_guard.skip_or_fail(reason)
    return path


@pytest.fixture(scope="session")
def tiny_models_dir(comfyui_path, tmp_path_factory) -> Path:
    """A ComfyUI ``models/`` tree with the tiny models, built once per session (or reused from the cache).

    The tiny FLUX is as narrow as this ComfyUI allows (``dla_harness.tiny_flux_width``).
    """
    cache = os.environ.get("DLA_TINY_MODELS_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("tiny-models")
    return cached_tiny_models_tree(root, tiny_flux_width(comfyui_path))


@pytest.fixture(scope="session")
def tiny_names():
    """File and folder names of the tiny models (as the loaders' dropdowns show them)."""
    return _tiny_names()


@pytest.fixture(scope="session")
def comfy(comfyui_path, tiny_models_dir, tmp_path_factory) -> ComfyRunner:
    """ComfyUI running in this process with the pack loaded; one executor (and cache) for the session."""
    reason = foreign_comfy_reason(comfyui_path)
    if reason:
        ci_guard.skip_or_fail(reason)
    base = make_comfy_base_directory(tmp_path_factory.mktemp("comfy-base"), tiny_models_dir)
    return ComfyRunner(comfyui_path, base, start_comfy_in_process(comfyui_path, base))


@pytest.fixture
def graph() -> Graph:
    """An empty API-format graph."""
    return Graph()


@pytest.fixture(scope="session")
def comfy_server(comfyui_path, tiny_models_dir):
    """The ComfyUI HTTP server with this pack and the tiny models; one per session, shared with the browser tests."""
    yield from dla_server.comfy_server_fixture(comfyui_path, tiny_models_dir)
