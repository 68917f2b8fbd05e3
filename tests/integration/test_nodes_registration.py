"""The pack loads through ComfyUI's own custom-node loader and documents itself."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

NODE_IDS = [
    "DLAMLLMLoader",
    "DLAMLLMJointEncode",
    "DLALoader",
    "DLAAggregate",
    "DLAVAEIdentityEncode",
    "DLAStagedKSampler",
    "DLAStagedGuider",
    "DLAStageConditioning",
    "DLAQwenCLIPJointEncode",
    "DLAReferenceLatents",
    "DLAFlux2TextEncode",
    "DLAStagedKSamplerAdvanced",
    "DLAStagedGuiderAdvanced",
    "DLALayerMap",
    "DLAKrea2JointEncode",
    "DLAKrea2LayerMap",
]


def test_every_node_id_is_registered_by_comfyui_loader(comfy):
    missing = [node_id for node_id in NODE_IDS if node_id not in comfy.nodes.NODE_CLASS_MAPPINGS]
    assert missing == []


def test_every_node_has_a_description_and_category_root(comfy):
    for node_id in NODE_IDS:
        info = comfy.nodes.NODE_CLASS_MAPPINGS[node_id].GET_NODE_INFO_V1()
        assert info["description"].strip(), node_id
        assert info["category"].split("/")[0] == "DLA subject", node_id
        assert info["display_name"], node_id


def test_every_input_and_output_has_a_tooltip(comfy):
    for node_id in NODE_IDS:
        info = comfy.nodes.NODE_CLASS_MAPPINGS[node_id].GET_NODE_INFO_V1()
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(info["output_tooltips"]), f"{node_id} has an output without tooltip"


def test_mllm_dropdown_lists_folders_by_name(comfy):
    info = comfy.nodes.NODE_CLASS_MAPPINGS["DLAMLLMLoader"].GET_NODE_INFO_V1()
    options = (
        info["input"]["required"]["mllm_name"][1]["options"]
        if isinstance(info["input"]["required"]["mllm_name"][0], str)
        else info["input"]["required"]["mllm_name"][0]
    )
    assert {"tiny-internvl", "tiny-qwen25vl"} <= set(options)


def test_extra_model_paths_entries_survive_folder_registration(comfy):
    import folder_paths

    dla_paths = folder_paths.get_folder_paths("dla")
    assert str(comfy.base_dir / "extra_dla") in [p.rstrip("/") for p in dla_paths]
    assert any(p.endswith("models/dla") for p in dla_paths)
    mllm_paths = folder_paths.get_folder_paths("mllm")
    assert any(p.endswith("models/mllm") for p in mllm_paths) and any(p.endswith("models/LLM") for p in mllm_paths)


def test_the_pack_registers_exactly_the_published_node_ids(comfy):
    """Node ids are a public contract: a new node must be added to NODE_IDS on purpose, and none may vanish."""
    pack_ids = {
        node_id
        for node_id, cls in comfy.nodes.NODE_CLASS_MAPPINGS.items()
        # DLATest*: the test-only tiny text-encoder loaders of tests/integration/support, never shipped.
        if node_id.startswith("DLA")
        and not node_id.startswith("DLATest")
        and getattr(cls, "RELATIVE_PYTHON_MODULE", "").startswith("custom_nodes.")
    }
    assert pack_ids == set(NODE_IDS)
