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


def test_there_are_workflows():
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


FLUX2_KLEIN_DLA = "flux2_klein_dla_subject"  # the paper's pipeline on FLUX.2 [klein] 4B (issue 19)
DLA_FILES = [
    path for path in UI_FILES if path.stem.startswith("dla_") or path.stem == FLUX2_KLEIN_DLA
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


def test_flux2_klein_dla_workflow_is_the_papers_pipeline_with_klein_sampling():
    """MLLM Loader (Qwen3-VL-4B) -> Joint Encode -> DLA -> Reference Latents -> staged guider, [klein]'s template
    sampling (Flux2Scheduler 4 steps, euler, cfg 1); stage 3 = the DLA's 'MLLM off' with the references."""
    api = load(API_DIR / f"{FLUX2_KLEIN_DLA}.json")
    (guider_id, guider), (sample,) = _staged_node(api), api_nodes_of_type(api, "SamplerCustomAdvanced")
    inputs = guider["inputs"]
    assert (inputs["cfg"], inputs["tau1"], inputs["tau2"]) == (1.0, 0.95, 0.85)
    assert inputs["model"] == [api_node_id(api, "LoraLoaderModelOnly"), 0]
    assert api[api_node_id(api, "LoraLoaderModelOnly")]["inputs"]["model"] == [api_node_id(api, "UNETLoader"), 0]
    aggregate = api_node_id(api, "DLAAggregate")
    assert inputs["positive_stage1"] == [aggregate, 0]
    refs = api[inputs["positive_stage2"][0]]
    assert refs["class_type"] == "DLAReferenceLatents" and refs["inputs"]["conditioning"] == [aggregate, 0]
    stage3 = api[inputs["positive_stage3"][0]]
    assert stage3["class_type"] == "DLAStageConditioning" and stage3["inputs"]["stage"] == "3: identity only"
    assert stage3["inputs"]["positive"] == inputs["positive_stage2"]
    encode = api[api[aggregate]["inputs"]["mllm_features"][0]]
    assert encode["class_type"] == "DLAMLLMJointEncode"
    assert api[encode["inputs"]["mllm"][0]]["inputs"]["mllm_name"] == "Qwen3-VL-4B-Instruct"
    assert sample["inputs"]["guider"] == [guider_id, 0]
    assert api[sample["inputs"]["sigmas"][0]]["inputs"] == {"steps": 4, "width": 1024, "height": 1024}
    assert api[sample["inputs"]["sampler"][0]]["inputs"] == {"sampler_name": "euler"}
    # the same klein settings and files as the training-free klein workflow (ComfyUI's klein template's)
    klein = load(API_DIR / "flux2_klein_staged.json")
    for kind in ("UNETLoader", "VAELoader", "Flux2Scheduler", "EmptyFlux2LatentImage", "KSamplerSelect"):
        assert api[api_node_id(api, kind)]["inputs"] == klein[api_node_id(klein, kind)]["inputs"], kind


def api_nodes_of_type(api: dict, class_type: str) -> list[dict]:
    return [node for node in api.values() if node["class_type"] == class_type]


def api_node_id(api: dict, class_type: str) -> str:
    (node_id,) = [i for i, node in api.items() if node["class_type"] == class_type]
    return node_id


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


# -- FLUX.2 and Qwen-Image-Edit-2511 (workflows newer than the oldest supported ComfyUI) -----------------
FLUX2_STAGED = ("flux2_dev_staged", "flux2_klein_staged")
NEW_FAMILY_FILES = [WORKFLOWS_DIR / f"{name}.json" for name in (*FLUX2_STAGED, "flux2_dev_compare")] + [
    WORKFLOWS_DIR / "qwen_image_edit_2511_staged.json"
]
# Node types and CLIPLoader types that only a ComfyUI with FLUX.2 has (0.3.64 lacks them).
FLUX2_ONLY_NODE_TYPES = {"EmptyFlux2LatentImage", "Flux2Scheduler"}
# The files of ComfyUI's own templates (comfyui-workflow-templates: image_flux2_fp8,
# image_flux2_klein_image_edit_4b_distilled, image_qwen_image_edit_2511).
TEMPLATE_FILES = {
    "flux2_dev_staged": {
        "flux2_dev_fp8mixed.safetensors",
        "mistral_3_small_flux2_fp8.safetensors",
        "flux2-vae.safetensors",
    },
    "flux2_dev_compare": {
        "flux2_dev_fp8mixed.safetensors",
        "mistral_3_small_flux2_fp8.safetensors",
        "flux2-vae.safetensors",
    },
    "flux2_klein_staged": {"flux-2-klein-4b-fp8.safetensors", "qwen_3_4b.safetensors", "flux2-vae.safetensors"},
    "qwen_image_edit_2511_staged": {
        "qwen_image_edit_2511_fp8mixed.safetensors",
        "qwen_2.5_vl_7b_fp8_scaled.safetensors",
        "qwen_image_vae.safetensors",
    },
}
MODEL_WIDGETS = {"UNETLoader": "unet_name", "CLIPLoader": "clip_name", "VAELoader": "vae_name"}


def _requires(ui: dict) -> dict | None:
    return (ui.get("extra") or {}).get("dla_requires")


@pytest.mark.parametrize("path", UI_FILES, ids=ids)
def test_a_workflow_that_needs_a_newer_comfyui_declares_it(path):
    """Any graph using FLUX.2-only nodes / CLIP type declares it (machine-readable) with the notice that tells users."""
    ui = load(path)
    api = load(API_DIR / path.name)
    types = {node["type"] for node in ui["nodes"]}
    clip_types = {node["inputs"]["type"] for node in api.values() if node["class_type"] == "CLIPLoader"}
    requires = _requires(ui)
    if "krea2" in clip_types:  # Krea 2 (ComfyUI 0.33; not in 0.3.64): its CLIPLoader type and notice
        assert requires == {
            "feature": "Krea 2 (comfy/ldm/krea2, CLIPLoader type krea2)",
            "min_comfyui": None,
            "node_types": [],
            "clip_types": ["krea2"],
            "reference_latents_methods": [],
            "notice": "nodes/compat.py::krea2_missing_message",
        }
        return
    if not (types & FLUX2_ONLY_NODE_TYPES or "flux2" in clip_types or path in NEW_FAMILY_FILES):
        assert requires is None  # the 2509 / Kontext / DLA workflows run on every supported ComfyUI
        return
    assert set(requires) == {
        "feature",
        "min_comfyui",
        "node_types",
        "clip_types",
        "reference_latents_methods",
        "notice",
    }
    assert set(requires["node_types"]) == types & FLUX2_ONLY_NODE_TYPES
    assert set(requires["clip_types"]) == clip_types & {"flux2"}
    if "flux2" in clip_types or types & FLUX2_ONLY_NODE_TYPES:  # FLUX.2 (also without a CLIPLoader: the DLA one)
        assert requires["notice"] == "nodes/compat.py::flux2_missing_message"
        assert requires["min_comfyui"] == ("0.9.2" if "klein" in path.stem else "0.3.72")
    else:
        assert requires["reference_latents_methods"] == ["index_timestep_zero"]


@pytest.mark.parametrize("path", NEW_FAMILY_FILES, ids=[path.stem for path in NEW_FAMILY_FILES])
def test_new_family_workflow_names_the_template_files_in_loaders_and_note(path):
    ui = load(path)
    api = load(API_DIR / path.name)
    named = {
        node["inputs"][MODEL_WIDGETS[node["class_type"]]]
        for node in api.values()
        if node["class_type"] in MODEL_WIDGETS
    }
    assert named == TEMPLATE_FILES[path.stem]
    note = only(ui, "Note")["widgets_values"][0]
    assert all(name in note for name in named)
    assert "not tuned" in note  # the recipe is a starting point


def _staged_node(api: dict) -> tuple[str, dict]:
    (found,) = [
        (i, n) for i, n in api.items() if n["class_type"] in ("DLAStagedGuiderAdvanced", "DLAStagedKSamplerAdvanced")
    ]
    return found


@pytest.mark.parametrize("path", NEW_FAMILY_FILES, ids=[path.stem for path in NEW_FAMILY_FILES])
def test_new_family_workflow_follows_the_staging_recipe(path):
    """Stage 1 text only, stage 2 text + two references, stage 3 = stage 2 (unconnected), tau 0.95 / 0."""
    api = load(API_DIR / path.name)
    _, staged = _staged_node(api)
    inputs = staged["inputs"]
    assert (inputs["tau1"], inputs["tau2"]) == (0.95, 0)
    assert "positive_stage3" not in inputs and "negative_stage3" not in inputs
    refs = api[inputs["positive_stage2"][0]]
    assert refs["class_type"] == "DLAReferenceLatents"
    assert refs["inputs"]["conditioning"] == inputs["positive_stage1"]  # stage 2 = stage 1's text + the references
    images = [api[refs["inputs"][f"image{i}"][0]]["inputs"]["image"] for i in (1, 2)]
    assert images == ["dla_subject_reference.png", "dla_second_reference.png"]
    if "negative_stage2" in inputs:  # cfg > 1 (Qwen-Image-Edit-2511): the negative gets the same references
        negative_refs = api[inputs["negative_stage2"][0]]
        assert negative_refs["inputs"]["conditioning"] == inputs["negative_stage1"]
        assert inputs["cfg"] > 1


def test_a_flux2_workflow_shows_a_reference_timing_example():
    _, staged = _staged_node(load(API_DIR / "flux2_dev_staged.json"))
    assert staged["inputs"]["reference_timing"] == "0.95-0, 1-0.5"


@pytest.mark.parametrize(
    "name", ["flux2_dev_staged", "flux2_klein_staged", "flux2_dev_compare", "qwen_image_edit_2511_staged"]
)
def test_the_flux2_and_qwen_workflows_expose_reference_strength(name):
    """The optional widget is saved by the front end; FLUX.2 [dev] shows an example, Qwen leaves it empty."""
    _, staged = _staged_node(load(API_DIR / f"{name}.json"))
    expected = "1.0, 0.6" if name == "flux2_dev_staged" else ""
    assert staged["inputs"]["reference_strength"] == expected


def test_flux2_compare_differs_only_in_staging():
    """Native (ReferenceLatent x2 + BasicGuider) and staged share seed, noise, sampler, latent and text."""
    api = load(API_DIR / "flux2_dev_compare.json")
    samplers = [node for node in api.values() if node["class_type"] == "SamplerCustomAdvanced"]
    assert len(samplers) == 2
    native, staged = sorted(samplers, key=lambda n: api[n["inputs"]["guider"][0]]["class_type"])
    assert api[native["inputs"]["guider"][0]]["class_type"] == "BasicGuider"
    for name in ("noise", "sampler", "latent_image"):
        assert native["inputs"][name] == staged["inputs"][name], name
    schedulers = [api[n["inputs"]["sigmas"][0]]["inputs"] for n in (native, staged)]
    assert schedulers[0] == schedulers[1]
    saves = [node for node in api.values() if node["class_type"] == "SaveImage"]
    assert len({node["inputs"]["filename_prefix"] for node in saves}) == 2
    # Native: both references on the FluxGuidance text, as ComfyUI's FLUX.2 template chains them.
    chain = api[native["inputs"]["guider"][0]]["inputs"]["conditioning"]
    refs = []
    while api[chain[0]]["class_type"] == "ReferenceLatent":
        refs.append(chain[0])
        chain = api[chain[0]]["inputs"]["conditioning"]
    assert len(refs) == 2 and api[chain[0]]["class_type"] == "FluxGuidance"
    _, staged_guider = _staged_node(api)
    assert staged_guider["inputs"]["positive_stage1"] == chain


# -- download links for the front end's missing-models list (issue 11.3) ----------------------------------
# The model folder of each loader's file widgets. ComfyUI's front end reads a loader node's properties.models
# ({name, url, directory}; an entry counts only while its name is one of the node's widget values) and, when
# the server lacks the file, lists it with that folder and a download button (front end 1.27: the "Missing
# Models" dialog, which offers downloads only from huggingface.co / civitai.com and of .safetensors / .sft
# files; 1.49: the Errors panel). tests/integration/browser/test_missing_models.py checks both front ends.
LOADER_FOLDERS = {
    "UNETLoader": {"unet_name": "diffusion_models"},
    "VAELoader": {"vae_name": "vae"},
    "CLIPLoader": {"clip_name": "text_encoders"},
    "DualCLIPLoader": {"clip_name1": "text_encoders", "clip_name2": "text_encoders"},
    "LoraLoaderModelOnly": {"lora_name": "loras"},
    "DLALoader": {"dla_name": "dla"},
    "DLAMLLMLoader": {"mllm_name": "mllm"},
}
# The pack's own files: the trained DLA checkpoints, the MLLM folder (a Hugging Face repository, not one
# file) and the LoRA trained with the DLA. No public single-file download: no entry.
PACK_ONLY_FOLDERS = {"dla", "mllm"}
PACK_ONLY_FILES = {
    "dla_internvl3-8b_flux1-dev_lora.safetensors",
    "dla_qwen3-vl-4b_flux2-klein-4b_lora.safetensors",
}
# Where the URLs of ComfyUI's own templates (the source of ours) point.
DOWNLOAD_URL_PREFIXES = (
    "https://huggingface.co/Comfy-Org/",
    "https://huggingface.co/comfyanonymous/",
    "https://huggingface.co/black-forest-labs/",
)


def _model_files(path: Path, node: dict) -> set[tuple[str, str]]:
    """(file name, folder) of each file widget of a loader node (values read from the API twin)."""
    return {(widget(path, node, name), folder) for name, folder in LOADER_FOLDERS[node["type"]].items()}


@pytest.mark.parametrize("path", UI_FILES, ids=ids)
def test_every_public_model_file_carries_its_download_link(path):
    ui = load(path)
    loaders = [node for node in ui["nodes"] if node["type"] in LOADER_FOLDERS]
    assert loaders
    assert {n["type"] for n in ui["nodes"] if "Loader" in n["type"] and n["type"] not in LOADER_FOLDERS} == set()
    for node in loaders:
        public = {
            (name, folder)
            for name, folder in _model_files(path, node)
            if folder not in PACK_ONLY_FOLDERS and name not in PACK_ONLY_FILES
        }
        models = node.get("properties", {}).get("models", [])
        assert {(m["name"], m["directory"]) for m in models} == public, node["type"]
        assert len(models) == len(public), node["type"]  # no duplicates
        for model in models:
            assert set(model) == {"name", "url", "directory"}
            url, name = model["url"], model["name"]
            assert url.startswith(DOWNLOAD_URL_PREFIXES), url
            assert "/resolve/main/" in url and url.endswith("/" + name), url
            assert name.endswith(".safetensors")  # what front end 1.27 lets a person download


@pytest.mark.parametrize("path", UI_FILES, ids=ids)
def test_only_loader_nodes_carry_model_links(path):
    for node in load(path)["nodes"]:
        if node["type"] not in LOADER_FOLDERS:
            assert "models" not in node.get("properties", {}), node["type"]


def test_a_file_has_one_download_link_across_the_workflows():
    links: dict[str, set[tuple[str, str]]] = {}
    for path in UI_FILES:
        for node in load(path)["nodes"]:
            for model in node.get("properties", {}).get("models", []):
                links.setdefault(model["name"], set()).add((model["url"], model["directory"]))
    assert links
    assert {name: found for name, found in links.items() if len(found) > 1} == {}
