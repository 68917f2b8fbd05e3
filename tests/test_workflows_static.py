"""The shipped workflows read correctly without a ComfyUI: graph consistency, UI/API agreement, the paper's pipeline.

The HTTP tests (tests/integration/http) convert each UI file with the server's /object_info
and run it; the browser tests load it into ComfyUI's front end. These checks need neither.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
API_DIR = WORKFLOWS_DIR / "api"
UI_FILES = sorted(WORKFLOWS_DIR.glob("*.json"))
FRONTEND_ONLY_NODE_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
# Loaders and encoders the DLA replaces: none of them may appear in a DLA workflow.
TEXT_ENCODER_NODE_TYPES = {
    "CLIPLoader",
    "DualCLIPLoader",
    "TripleCLIPLoader",
    "QuadrupleCLIPLoader",
    "CheckpointLoaderSimple",
    "CLIPTextEncode",
    "CLIPTextEncodeFlux",
    "UNETLoaderWithCLIP",
}
PAPER_PIPELINE_NODE_TYPES = {
    "UNETLoader",
    "LoraLoaderModelOnly",
    "VAELoader",
    "DLAMLLMLoader",
    "LoadImage",
    "DLAMLLMJointEncode",
    "DLALoader",
    "DLAAggregate",
    "DLAVAEIdentityEncode",
    "DLAStagedKSampler",
    "VAEDecode",
    "SaveImage",
}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def ui_nodes_by_id(ui: dict) -> dict[int, dict]:
    return {node["id"]: node for node in ui["nodes"]}


def only(ui: dict, node_type: str) -> dict:
    (node,) = [node for node in ui["nodes"] if node["type"] == node_type]
    return node


def widget(path: Path, node: dict, name: str):
    """A widget's value, read from the API twin (whose agreement with the UI file is tested below)."""
    return load(API_DIR / path.name)[str(node["id"])]["inputs"][name]


def source(ui: dict, node: dict, input_name: str) -> tuple[int, int]:
    """(origin node id, origin slot) feeding ``node``'s input ``input_name``."""
    (slot,) = [slot for slot in node["inputs"] if slot["name"] == input_name]
    link = {link[0]: link for link in ui["links"]}[slot["link"]]
    return link[1], link[2]


ids = [path.stem for path in UI_FILES]


def test_there_are_example_workflows():
    assert {"dla_flux_subject", "dla_flux_staging_compare"} <= set(ids)


def test_every_ui_workflow_has_an_api_twin_and_no_api_file_is_orphaned():
    assert sorted(path.name for path in API_DIR.glob("*.json")) == sorted(path.name for path in UI_FILES)


@pytest.mark.parametrize("path", UI_FILES, ids=ids)
def test_ui_links_agree_with_both_ends_and_none_dangles(path):
    ui = load(path)
    nodes = ui_nodes_by_id(ui)
    assert len(nodes) == len(ui["nodes"]), "duplicate node ids"
    links = {link[0]: link for link in ui["links"]}
    assert len(links) == len(ui["links"]), "duplicate link ids"
    for link_id, origin_id, origin_slot, target_id, target_slot, link_type in ui["links"]:
        output = nodes[origin_id]["outputs"][origin_slot]
        target_input = nodes[target_id]["inputs"][target_slot]
        assert link_id in (output["links"] or []), f"link {link_id} missing from its origin's output"
        assert target_input["link"] == link_id, f"link {link_id} missing from its target's input"
        assert output["type"] == link_type and target_input["type"] in (link_type, "*"), f"link {link_id} types"
    for node in ui["nodes"]:
        for slot in node.get("inputs", []):
            assert slot.get("link") is None or slot["link"] in links, f"node {node['id']} input {slot['name']} dangles"
        for slot in node.get("outputs", []):
            assert all(link_id in links for link_id in slot.get("links") or []), f"node {node['id']} output dangles"
    assert ui["last_node_id"] >= max(nodes) and ui["last_link_id"] >= max(links)


@pytest.mark.parametrize("path", UI_FILES, ids=ids)
def test_every_required_socket_is_connected(path):
    ui = load(path)
    api = load(API_DIR / path.name)
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY_NODE_TYPES:
            continue
        present = set(api[str(node["id"])]["inputs"])
        optional = {"negative", "identity", "stage3_conditioning", "image_2", "image_3"}
        # shape 7: the front end's mark of an optional socket (e.g. image2..image6 of the Qwen nodes)
        missing = [
            slot["name"]
            for slot in node.get("inputs", [])
            if "widget" not in slot and slot.get("shape") != 7 and slot["name"] not in present | optional
        ]
        assert missing == [], f"node {node['id']} ({node['type']}) has unconnected sockets {missing}"


@pytest.mark.parametrize("path", UI_FILES, ids=ids)
def test_api_file_has_the_ui_nodes_and_links(path):
    ui = load(path)
    api = load(API_DIR / path.name)
    runnable = {str(node["id"]): node for node in ui["nodes"] if node["type"] not in FRONTEND_ONLY_NODE_TYPES}
    assert set(api) == set(runnable)
    links = {link[0]: link for link in ui["links"]}
    for node_id, node in runnable.items():
        assert api[node_id]["class_type"] == node["type"]
        api_links = {name: value for name, value in api[node_id]["inputs"].items() if isinstance(value, list)}
        ui_links = {
            slot["name"]: [str(links[slot["link"]][1]), links[slot["link"]][2]]
            for slot in node["inputs"]
            if slot.get("link") is not None
        }
        assert api_links == ui_links, node_id
        for origin_id, _ in api_links.values():
            assert origin_id in api, f"node {node_id} reads from missing node {origin_id}"


@pytest.mark.parametrize("path", UI_FILES, ids=ids)
def test_api_widget_inputs_follow_the_ui_widget_values_in_order(path):
    ui = load(path)
    api = load(API_DIR / path.name)
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY_NODE_TYPES:
            continue
        api_values = [value for value in api[str(node["id"])]["inputs"].values() if not isinstance(value, list)]
        remaining = iter(node.get("widgets_values") or [])
        assert all(any(value == candidate for candidate in remaining) for value in api_values), (
            f"node {node['id']} ({node['type']}): API values {api_values} are not the UI widget values "
            f"{node.get('widgets_values')} in order"
        )


DLA_FILES = [
    path for path in UI_FILES if path.stem.startswith("dla_")
]  # Qwen-Image-Edit / Kontext graphs use ComfyUI's encoders


@pytest.mark.parametrize("path", DLA_FILES, ids=[path.stem for path in DLA_FILES])
def test_no_clip_or_t5_loader_the_dla_replaces_them(path):
    assert {node["type"] for node in load(path)["nodes"]} & TEXT_ENCODER_NODE_TYPES == set()


def test_subject_workflow_is_the_papers_pipeline_with_users_file_names():
    path = WORKFLOWS_DIR / "dla_flux_subject.json"
    ui = load(path)
    types = {node["type"] for node in ui["nodes"]}
    assert PAPER_PIPELINE_NODE_TYPES <= types
    assert widget(path, only(ui, "UNETLoader"), "unet_name") == "flux1-dev.safetensors"
    assert widget(path, only(ui, "VAELoader"), "vae_name") == "ae.safetensors"
    assert widget(path, only(ui, "DLAMLLMLoader"), "mllm_name") == "InternVL3-8B-hf"
    latent = only(ui, "EmptySD3LatentImage")
    assert (widget(path, latent, "width"), widget(path, latent, "height")) == (1024, 1024)
    sampler = only(ui, "DLAStagedKSampler")
    assert (widget(path, sampler, "tau1"), widget(path, sampler, "tau2")) == (0.95, 0.85)
    assert widget(path, only(ui, "DLAAggregate"), "guidance") == 2.5
    # FLUX with the LoRA, not FLUX alone, goes into the sampler.
    assert source(ui, sampler, "model")[0] == only(ui, "LoraLoaderModelOnly")["id"]


def test_compare_workflow_differs_only_in_staging():
    path = WORKFLOWS_DIR / "dla_flux_staging_compare.json"
    ui = load(path)
    samplers = [node for node in ui["nodes"] if node["type"] == "DLAStagedKSampler"]
    assert sorted((widget(path, node, "tau1"), widget(path, node, "tau2")) for node in samplers) == [
        (0.0, 0.0),
        (0.95, 0.85),
    ]
    off, on = samplers
    for name in ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"):
        assert widget(path, off, name) == widget(path, on, name), name
    for name in ("model", "positive", "identity", "latent_image"):
        assert source(ui, off, name) == source(ui, on, name), name
    saves = [node for node in ui["nodes"] if node["type"] == "SaveImage"]
    assert len({widget(path, node, "filename_prefix") for node in saves}) == 2


def _user_model_names() -> dict:
    from dla_harness import server

    return {
        **server.USER_MODEL_NAMES,
        **{key: "(built by test_qwen_kontext_workflows.py)" for key in server.LISTED_ONLY_MODEL_NAMES},
    }


@pytest.mark.parametrize("path", UI_FILES, ids=ids)
def test_every_model_file_a_workflow_names_has_a_tiny_stand_in_for_the_tests(path):
    loaders = {
        "UNETLoader": "unet_name",
        "VAELoader": "vae_name",
        "LoraLoaderModelOnly": "lora_name",
        "DLAMLLMLoader": "mllm_name",
        "DLALoader": "dla_name",
    }
    stand_ins = {user_name for _, user_name in _user_model_names()}
    named = {widget(path, node, loaders[node["type"]]) for node in load(path)["nodes"] if node["type"] in loaders}
    assert named - stand_ins == set()
