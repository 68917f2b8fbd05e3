"""The shipped workflows as prompts: UI -> API conversion and the tiny-model version of a workflow.

`ui_to_api` converts a UI-format workflow (what ComfyUI's "Save" writes) into the API format
(what `POST /prompt` takes) from the server's `/object_info`, the way the front end does it:
widget values in the order of the node's inputs (required, then optional), skipping the extra
values the front end stores for "control after generate" and for the image upload button; a
linked input becomes `[origin node id, origin slot]`. Notes and other front-end-only nodes
are dropped.

`tiny_prompt` turns a shipped API workflow into one that runs on the tiny models in seconds.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from dla_harness.tree import REPO_ROOT

WORKFLOWS_DIR = REPO_ROOT / "workflows"
API_DIR = WORKFLOWS_DIR / "api"
FRONTEND_ONLY_NODE_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MODE_ALWAYS = 0

# What makes a shipped workflow small enough for two CPU cores, per node type. Everything else
# (prompt, seed, cfg, sampler, scheduler, taus, placement, guidance) is run exactly as shipped.
# 3 steps of FLUX's shifted 'simple' schedule give sigmas 1.0, 0.86, 0.61: with tau 0.95/0.85
# that is one model call in each of the three stages.
TINY_RUN_OVERRIDES = {
    "EmptySD3LatentImage": {"width": 64, "height": 64},
    "EmptyLatentImage": {"width": 64, "height": 64},
    "DLAStagedKSampler": {"steps": 3},
    "DLAMLLMJointEncode": {"image_size": 56},  # the tiny InternVL's tile size
}


def ui_workflows() -> list[Path]:
    """Every UI-format workflow shipped in workflows/."""
    return sorted(WORKFLOWS_DIR.glob("*.json"))


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """API-format prompt of a UI-format workflow; raises ValueError where the two cannot agree."""
    links = {link[0]: link for link in ui.get("links", [])}
    prompt = {}
    for node in ui["nodes"]:
        node_type = node["type"]
        if node_type in FRONTEND_ONLY_NODE_TYPES:
            continue
        if node.get("mode", MODE_ALWAYS) != MODE_ALWAYS:
            raise ValueError(
                f"node {node['id']} ({node_type}) is muted or bypassed; shipped workflows keep every node active"
            )
        if node_type not in object_info:
            raise ValueError(f"node {node['id']}: type {node_type} is not registered on the server")
        info = object_info[node_type]
        values = list(node.get("widgets_values") or [])
        inputs = {}
        position = 0
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                if not _is_widget(spec):
                    continue
                if position >= len(values):
                    raise ValueError(f"node {node['id']} ({node_type}) has no widget value for '{name}'")
                if values[position] is not None:
                    inputs[name] = values[position]
                position += 1
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if options.get("control_after_generate"):
                    position += 1  # "fixed" / "randomize": front-end state, not an input
                if options.get("image_upload"):
                    position += 1  # the upload button's value
        if position != len(values):
            raise ValueError(
                f"node {node['id']} ({node_type}) has {len(values)} widget values, its inputs take {position}"
            )
        for slot in node.get("inputs", []):
            link_id = slot.get("link")
            if link_id is None:
                continue
            if link_id not in links:
                raise ValueError(
                    f"node {node['id']} ({node_type}) input '{slot['name']}' uses link {link_id}, which does not exist"
                )
            _, origin_id, origin_slot, target_id, _, _ = links[link_id]
            if target_id != node["id"]:
                raise ValueError(f"link {link_id} ends at node {target_id}, not at node {node['id']}")
            inputs[slot["name"]] = [str(origin_id), origin_slot]
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node_type}
    return prompt


def without_meta(prompt: dict) -> dict:
    """The prompt without the front end's `_meta` (titles), which the server ignores."""
    return {node_id: {"inputs": node["inputs"], "class_type": node["class_type"]} for node_id, node in prompt.items()}


def tiny_prompt(api_prompt: dict, user_model_names: dict, overrides: dict = TINY_RUN_OVERRIDES) -> dict:
    """The shipped API prompt on the tiny models: file names swapped, sizes and steps shrunk.

    ``user_model_names`` maps (model folder, user's file name) -> tiny file name
    (``dla_harness.server.USER_MODEL_NAMES``); e.g. flux1-dev.safetensors -> tiny_flux.safetensors,
    InternVL3-8B-hf -> tiny-internvl. Every input holding a user's name gets the tiny one.
    """
    by_user_name = {user_name: tiny for (_, user_name), tiny in user_model_names.items()}
    prompt = copy.deepcopy(without_meta(api_prompt))
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if isinstance(value, str) and value in by_user_name:
                node["inputs"][name] = by_user_name[value]
        node["inputs"].update(overrides.get(node["class_type"], {}))
    return prompt


def nodes_of_type(prompt: dict, class_type: str) -> list[str]:
    """Ids of the prompt's nodes of one type, in id order."""
    return sorted((node_id for node_id, node in prompt.items() if node["class_type"] == class_type), key=int)


# -- what a workflow needs from ComfyUI ---------------------------------------------------------------
# The FLUX.2 and Qwen-Image-Edit-2511 workflows declare, in their UI file's ``extra.dla_requires`` (written by
# tests/integration/support/build_flux2_qwen2511_workflows.js), what they need from ComfyUI:
#   feature                    the model family in words
#   min_comfyui                the first ComfyUI release with it ("0.3.72"), or null where no release is named
#   node_types                 ComfyUI node types the graph uses that older ComfyUI lacks
#   clip_types                 CLIPLoader types it needs ("flux2")
#   reference_latents_methods  reference methods ComfyUI's Edit Model Reference Method must know
#   notice                     what tells the user on a ComfyUI without it
# On a ComfyUI that lacks one, the tests check that it really lacks it and that the user is told,
# instead of running or loading the graph.
REQUIREMENTS_KEY = "dla_requires"
REQUIREMENT_FIELDS = ("feature", "min_comfyui", "node_types", "clip_types", "reference_latents_methods", "notice")
FLUX2_NOTICE = "nodes/compat.py::flux2_missing_message"


def workflow_requirements(ui: dict) -> dict | None:
    """The UI workflow's ``extra.dla_requires`` (None for a workflow that runs on every supported ComfyUI)."""
    return (ui.get("extra") or {}).get(REQUIREMENTS_KEY)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in str(version).split(".")[:3] if part.isdigit())


def combo_options(object_info: dict, node_type: str, input_name: str) -> list:
    """The options of a node's required combo input in /object_info ([] where the node or input is absent)."""
    spec = object_info.get(node_type, {}).get("input", {}).get("required", {}).get(input_name)
    if spec is None:
        return []
    return spec[0] if isinstance(spec[0], list) else spec[1].get("options", [])


def unmet_requirements(requires: dict | None, object_info: dict, comfyui_version: str) -> list[str]:
    """What of ``requires`` this ComfyUI (its /object_info and version) lacks, one line each; [] = all there."""
    if not requires:
        return []
    unmet = [f"node type {name}" for name in requires["node_types"] if name not in object_info]
    clip_types = combo_options(object_info, "CLIPLoader", "type")
    unmet += [f"CLIPLoader type {name}" for name in requires["clip_types"] if name not in clip_types]
    methods = combo_options(object_info, "FluxKontextMultiReferenceLatentMethod", "reference_latents_method")
    unmet += [f"reference method {name}" for name in requires["reference_latents_methods"] if name not in methods]
    minimum = requires.get("min_comfyui")
    if minimum and _version_tuple(comfyui_version) < _version_tuple(minimum):
        unmet.append(f"ComfyUI >= {minimum} (this is {comfyui_version})")
    return unmet


def flux2_notice(comfyui_version: str) -> str:
    """The pack's one-line notice on a ComfyUI without FLUX.2 (nodes/compat.py), for ``comfyui_version``.

    Worded by the pack that ComfyUI loaded in this process (the ``comfy`` fixture), which must be the same
    ComfyUI version as the server's.
    """
    from dla_harness.in_process import pack_module

    compat = pack_module("nodes.compat")
    if compat.comfyui_version() != comfyui_version:
        raise RuntimeError(f"ComfyUI in this process is {compat.comfyui_version()}, the server's is {comfyui_version}")
    return compat.flux2_missing_message()
