"""The harness finds the pack where ComfyUI's own custom-node loader put it (``dla_harness.pack_module``)."""

from __future__ import annotations

import sys

import pytest
from dla_harness import PACK_DIR_NAME, REPO_ROOT, loaded_pack_name, pack_import_name, pack_module

pytestmark = pytest.mark.integration


def test_pack_module_is_the_copy_whose_nodes_comfyui_registered(comfy):
    registered = comfy.nodes.NODE_CLASS_MAPPINGS
    assert registered["DLAMLLMLoader"] is pack_module("nodes.mllm_nodes").DLAMLLMLoader
    assert registered["DLAReferenceLatents"] is pack_module("nodes.qwen_identity").DLAReferenceLatents
    assert pack_module().__file__ == str(comfy.base_dir / "custom_nodes" / PACK_DIR_NAME / "__init__.py")
    assert pack_module("dla_core.errors").__file__.startswith(str(comfy.base_dir))  # the symlink's path


def test_the_name_follows_comfyuis_rule_for_a_custom_node_folder(comfy):
    import folder_paths

    (custom_nodes,) = folder_paths.get_folder_paths("custom_nodes")
    assert loaded_pack_name() == pack_import_name(custom_nodes) == f"{custom_nodes}/{PACK_DIR_NAME}".replace(".", "_x_")
    assert sys.modules[loaded_pack_name()].__path__ == [str(comfy.base_dir / "custom_nodes" / PACK_DIR_NAME)]
    assert (comfy.base_dir / "custom_nodes" / PACK_DIR_NAME).resolve() == REPO_ROOT
    # ComfyUI's copy is not the repository's own dla_core (what unit tests import from the repository root):
    # classes the running nodes raise or return come from pack_module, not from ``import dla_core``.
    import dla_core.errors

    assert pack_module("dla_core.errors").DLAInputError is not dla_core.errors.DLAInputError
