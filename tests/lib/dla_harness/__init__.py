"""TEST-ONLY harness: a real ComfyUI with this pack loaded as a custom node, on tiny models.

ComfyUI owns the top-level module names ``nodes``, ``server``, ``utils`` and ``tests``, so the harness
lives in tests/lib under its own name (tests/conftest.py puts tests/lib on ``sys.path``; scripts add it
in one line) and test files import it: ``from dla_harness import Graph, add_dla_pipeline, pack_module``.
conftest.py files only define fixtures on top of it.

- :mod:`.tree`: the tiny models tree and a ComfyUI ``--base-directory`` with the pack symlinked in;
- :mod:`.in_process`: ComfyUI started in this process, :class:`ComfyRunner` to queue prompts, and
  :func:`pack_module` -- the pack's modules as ComfyUI's custom-node loader imported them;
- :mod:`.graph`: API-format prompts (:class:`Graph`, :func:`add_dla_pipeline`, :func:`add_staged_sampler`);
- :mod:`.server`: the real HTTP server (``main.py --cpu``) as a subprocess (HTTP and browser tests);
- :mod:`.workflow_prompts`: the shipped workflows as API prompts on the tiny models.

``server`` and ``workflow_prompts`` are imported by their own names (``from dla_harness import server``).
Nothing here imports ComfyUI, torch or the pack at import time.
"""

from __future__ import annotations

from ci_guard import find_comfyui

from dla_harness.graph import Graph, PipelineNodes, add_dla_pipeline, add_staged_sampler
from dla_harness.in_process import (
    ComfyRunner,
    PromptResult,
    foreign_comfy_reason,
    loaded_pack_name,
    make_executor,
    pack_import_name,
    pack_module,
    start_comfy_in_process,
)
from dla_harness.tree import (
    EXTRA_DLA_DIR,
    PACK_DIR_NAME,
    REFERENCE_IMAGE,
    REPO_ROOT,
    TINY_DLA,
    TINY_DLA_OTHER_MLLM,
    TINY_DLA_OTHER_WIDTH,
    TINY_FLUX,
    TINY_LORA,
    TINY_MLLM,
    TINY_OTHER_MLLM,
    TINY_VAE,
    build_tiny_models_tree,
    cached_tiny_models_tree,
    give_dla_a_learned_null,
    make_comfy_base_directory,
    tiny_flux_width,
    tiny_names,
    write_reference_image,
)

__all__ = [
    "EXTRA_DLA_DIR",
    "PACK_DIR_NAME",
    "REFERENCE_IMAGE",
    "REPO_ROOT",
    "TINY_DLA",
    "TINY_DLA_OTHER_MLLM",
    "TINY_DLA_OTHER_WIDTH",
    "TINY_FLUX",
    "TINY_LORA",
    "TINY_MLLM",
    "TINY_OTHER_MLLM",
    "TINY_VAE",
    "ComfyRunner",
    "Graph",
    "PipelineNodes",
    "PromptResult",
    "add_dla_pipeline",
    "add_staged_sampler",
    "build_tiny_models_tree",
    "cached_tiny_models_tree",
    "find_comfyui",
    "foreign_comfy_reason",
    "give_dla_a_learned_null",
    "loaded_pack_name",
    "make_comfy_base_directory",
    "make_executor",
    "pack_import_name",
    "pack_module",
    "start_comfy_in_process",
    "tiny_flux_width",
    "tiny_names",
    "write_reference_image",
]
