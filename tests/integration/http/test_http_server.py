"""The pack inside the real ComfyUI HTTP server (`main.py --cpu`): /object_info, /prompt, /history, /interrupt.

The server runs the tiny models; the shipped workflows are remapped onto them by
`dla_harness.workflow_prompts.tiny_prompt` (file names per `dla_harness.server.USER_MODEL_NAMES`, sizes and steps
per `TINY_RUN_OVERRIDES`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid

import numpy as np
import pytest
from dla_harness import server as dla_server
from dla_harness import workflow_prompts as wf
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.slow]

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
    "DLAStagedKSamplerAdvanced",
]
CATEGORY_ROOT = "DLA subject"
SUBJECT = "dla_flux_subject"
COMPARE = "dla_flux_staging_compare"
# Need ComfyUI's full-size text encoders through the stock loaders (7B Qwen2.5-VL, 4.7B T5-XXL): they run on
# tiny models in tests/integration/test_qwen_kontext_workflows.py (test-only tiny loaders substituted) instead.
RUN_ELSEWHERE = {
    "qwen_image_edit_2509_staged",
    "qwen_image_edit_2509_compare",
    "flux_kontext_staged",
    "flux_kontext_compare",
    # FLUX.2 / Qwen-Image-Edit-2511: over HTTP on their own server with the tiny loaders
    # (tests/integration/http/test_flux2_qwen2511_workflows.py)
    "flux2_dev_staged",
    "flux2_klein_staged",
    "flux2_dev_compare",
    "qwen_image_edit_2511_staged",
    # Krea 2: on its own server with the tiny loaders (tests/integration/http/test_krea2_workflows.py)
    "krea2_staged",
    "krea2_compare",
    # the paper's pipeline on FLUX.2 [klein]: with a DLA + LoRA trained on a tiny [klein]
    # (tests/integration/http/test_flux2_trained_dla_http.py)
    "flux2_klein_dla_subject",
}
RUN_HERE = [path.stem for path in wf.ui_workflows() if path.stem not in RUN_ELSEWHERE]
# The tiny stand-in of a DLA trained for a different MLLM (Qwen2.5-VL) than the one loaded.
DLA_FOR_OTHER_MLLM = "tiny_dla_for_qwen25vl.safetensors"


def shipped_tiny_prompt(name: str) -> dict:
    """workflows/api/<name>.json on the tiny models."""
    return wf.tiny_prompt(wf.load_json(wf.API_DIR / f"{name}.json"), dla_server.USER_MODEL_NAMES)


def node_of(prompt: dict, class_type: str) -> str:
    (node_id,) = wf.nodes_of_type(prompt, class_type)
    return node_id


def expect_node_error(server, prompt: dict, node_id: str) -> str:
    """Queue a prompt that must fail at node ``node_id``; returns the error text shown to the user.

    ComfyUI reports a bad input either when it validates the prompt (HTTP 400 with
    node_errors) or when the node runs (an execution_error in /history); both name the node.
    """
    status, response = server.queue_prompt(prompt)
    if status == 400:
        assert node_id in response["node_errors"], json.dumps(response, indent=1)
        return json.dumps(response["node_errors"][node_id])
    assert status == 200, response
    entry = server.wait_for_history(response["prompt_id"], timeout=300)
    assert entry["status"]["status_str"] == "error", json.dumps(entry["status"], indent=1)[:3000]
    (error,) = dla_server.history_messages(entry, "execution_error")
    assert error["node_id"] == node_id, error
    return error["exception_message"]


def assert_server_still_serves(server):
    assert server.is_alive(), server.log_tail()
    status, _ = server.request("GET", "/system_stats")
    assert status == 200


# -- /object_info -----------------------------------------------------------------------------------
def test_object_info_lists_every_node_id(comfy_server):
    info = comfy_server.object_info()
    assert [node_id for node_id in NODE_IDS if node_id not in info] == []


def test_object_info_gives_every_node_a_description_and_the_category_root(comfy_server):
    info = comfy_server.object_info()
    for node_id in NODE_IDS:
        assert info[node_id]["description"].strip(), node_id
        assert info[node_id]["category"].split("/")[0] == CATEGORY_ROOT, node_id


def test_object_info_gives_every_input_and_output_a_tooltip(comfy_server):
    info = comfy_server.object_info()
    untipped = []
    for node_id in NODE_IDS:
        for section in ("required", "optional"):
            for name, spec in info[node_id]["input"].get(section, {}).items():
                if not (len(spec) > 1 and spec[1].get("tooltip", "").strip()):
                    untipped.append(f"{node_id}.{name}")
        tooltips = info[node_id].get("output_tooltips", [])
        if len(tooltips) != len(info[node_id]["output"]) or not all(tooltips):
            untipped.append(f"{node_id} outputs")
    assert untipped == []


def test_dropdowns_list_the_models_under_the_names_users_have(comfy_server):
    info = comfy_server.object_info()

    def options(node_id, name):
        spec = info[node_id]["input"]["required"][name]
        return spec[0] if isinstance(spec[0], list) else spec[1]["options"]

    assert "InternVL3-8B-hf" in options("DLAMLLMLoader", "mllm_name")
    assert "dla_internvl3-8b_flux1-dev.safetensors" in options("DLALoader", "dla_name")


# -- the shipped workflows ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", [path.stem for path in wf.ui_workflows()])
def test_api_workflow_matches_its_ui_workflow(comfy_server, name):
    ui = wf.load_json(wf.WORKFLOWS_DIR / f"{name}.json")
    api = wf.load_json(wf.API_DIR / f"{name}.json")
    info = comfy_server.object_info()
    version = comfy_server.get_json("/system_stats")["system"]["comfyui_version"]
    missing_types = [t for t in (wf.workflow_requirements(ui) or {}).get("node_types", []) if t not in info]
    if missing_types:  # a ComfyUI older than the workflow (FLUX.2 on 0.3.64): the conversion names what is missing
        with pytest.raises(ValueError, match="|".join(missing_types)):
            wf.ui_to_api(ui, info)
        assert wf.unmet_requirements(wf.workflow_requirements(ui), info, version)
        return
    if wf.unmet_requirements(wf.workflow_requirements(ui), info, version):
        # Every node type exists but the graph needs more than this ComfyUI has (Krea 2 on 0.3.64: CLIPLoader
        # type krea2): the API file is the newer ComfyUI's, whose nodes may take other inputs
        # (ImageScaleToTotalPixels gained one), so a conversion that fails here says nothing.
        try:
            converted = wf.ui_to_api(ui, info)
        except ValueError:
            return
        assert converted == wf.without_meta(api)
        return
    assert wf.ui_to_api(ui, info) == wf.without_meta(api)


def _run_and_load_images(server, prompt: dict) -> dict[str, np.ndarray]:
    entry = server.run_prompt(prompt, timeout=900)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    images = {}
    for node_id, output in entry["outputs"].items():
        for image in output.get("images", []):
            path = server.base_dir / image["type"] / image["subfolder"] / image["filename"]
            assert path.is_file(), path
            images[node_id] = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return images


@pytest.fixture(scope="module")
def shipped_run(comfy_server):
    """Runs a shipped workflow on the tiny models once per module: name -> (prompt, {SaveImage id: image})."""
    runs = {}

    def run(name: str):
        if name not in runs:
            prompt = shipped_tiny_prompt(name)
            runs[name] = (prompt, _run_and_load_images(comfy_server, prompt))
        return runs[name]

    return run


@pytest.mark.parametrize("name", RUN_HERE)
def test_shipped_workflow_runs_to_an_image_file_per_save_node(shipped_run, name):
    prompt, images = shipped_run(name)
    assert set(images) == set(wf.nodes_of_type(prompt, "SaveImage"))


@pytest.mark.parametrize("name", RUN_HERE)
def test_shipped_workflow_images_have_the_latent_size_and_are_not_blank(shipped_run, name):
    prompt, images = shipped_run(name)
    latent = prompt[wf.nodes_of_type(prompt, "EmptySD3LatentImage")[0]]["inputs"]
    for image in images.values():
        assert image.shape == (latent["height"], latent["width"], 3)
        assert image.std() > 1.0


def test_staging_compare_workflow_saves_two_different_images(shipped_run):
    _, images = shipped_run(COMPARE)
    off, on = images.values()
    # Same seed, same MLLM conditioning: only the staging (reference latents in stages 2 and 3,
    # "MLLM off" in stage 3) tells the two apart.
    assert np.abs(off - on).mean() > 0.5


# -- bad inputs come back as node errors; the server keeps serving ---------------------------------
def test_tau1_below_tau2_is_a_staged_ksampler_error(comfy_server):
    prompt = shipped_tiny_prompt(SUBJECT)
    sampler = node_of(prompt, "DLAStagedKSampler")
    prompt[sampler]["inputs"].update(tau1=0.5, tau2=0.9)
    message = expect_node_error(comfy_server, prompt, sampler)
    assert "tau2" in message and "tau1" in message
    assert_server_still_serves(comfy_server)


def test_zero_steps_is_a_staged_ksampler_error(comfy_server):
    prompt = shipped_tiny_prompt(SUBJECT)
    sampler = node_of(prompt, "DLAStagedKSampler")
    prompt[sampler]["inputs"]["steps"] = 0
    message = expect_node_error(comfy_server, prompt, sampler)
    assert "steps" in message
    assert_server_still_serves(comfy_server)


def test_empty_prompt_is_a_joint_encode_error(comfy_server):
    prompt = shipped_tiny_prompt(SUBJECT)
    encode = node_of(prompt, "DLAMLLMJointEncode")
    prompt[encode]["inputs"]["prompt"] = "   "
    message = expect_node_error(comfy_server, prompt, encode)
    assert "prompt" in message.lower()
    assert_server_still_serves(comfy_server)


def test_rgba_reference_is_a_joint_encode_error(comfy_server):
    prompt = shipped_tiny_prompt(SUBJECT)
    encode = node_of(prompt, "DLAMLLMJointEncode")
    load = node_of(prompt, "LoadImage")
    # Core's "Join Image with Alpha" makes the 4-channel IMAGE a person would wire in by mistake.
    prompt["900"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": [load, 0], "alpha": [load, 1]}}
    prompt[encode]["inputs"]["image"] = ["900", 0]
    message = expect_node_error(comfy_server, prompt, encode)
    assert "alpha" in message.lower()
    assert_server_still_serves(comfy_server)


def test_dla_for_another_mllm_is_an_aggregate_error(comfy_server):
    prompt = shipped_tiny_prompt(SUBJECT)
    prompt[node_of(prompt, "DLALoader")]["inputs"]["dla_name"] = DLA_FOR_OTHER_MLLM
    aggregate = node_of(prompt, "DLAAggregate")
    message = expect_node_error(comfy_server, prompt, aggregate)
    assert "qwen" in message.lower() or "internvl" in message.lower()
    assert_server_still_serves(comfy_server)


def test_prompt_after_a_failed_prompt_runs(comfy_server):
    bad = shipped_tiny_prompt(SUBJECT)
    bad[node_of(bad, "DLAMLLMJointEncode")]["inputs"]["prompt"] = ""
    expect_node_error(comfy_server, bad, node_of(bad, "DLAMLLMJointEncode"))
    good = shipped_tiny_prompt(SUBJECT)
    good[node_of(good, "DLAStagedKSampler")]["inputs"].update(seed=7, steps=1)  # new seed: not served from cache
    assert len(_run_and_load_images(comfy_server, good)) == 1


# -- interruption ---------------------------------------------------------------------------------------
async def _queue_and_interrupt_during_sampling(server, prompt: dict, sampler: str) -> list[str]:
    """Queue ``prompt``, POST /interrupt after the sampler's first step; returns the events seen."""
    import aiohttp

    client_id = uuid.uuid4().hex
    events = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.url}/ws?clientId={client_id}") as socket:
            async with session.post(
                f"{server.url}/prompt", json={"prompt": prompt, "client_id": client_id}
            ) as response:
                assert response.status == 200, await response.text()
                prompt_id = (await response.json())["prompt_id"]
            interrupted = False
            while True:
                message = await asyncio.wait_for(socket.receive(), timeout=600)
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue  # binary latent previews
                event = json.loads(message.data)
                kind, data = event["type"], event.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                events.append(kind)
                if kind == "progress" and data.get("node") == sampler and not interrupted:
                    interrupted = True
                    async with session.post(f"{server.url}/interrupt", json={}) as response:
                        assert response.status == 200
                if kind in ("execution_interrupted", "execution_success", "execution_error"):
                    return events


def test_interrupt_during_sampling_stops_the_prompt_and_the_next_prompt_runs(comfy_server):
    prompt = shipped_tiny_prompt(SUBJECT)
    sampler = node_of(prompt, "DLAStagedKSampler")
    prompt[sampler]["inputs"].update(seed=123, steps=40)
    events = asyncio.run(_queue_and_interrupt_during_sampling(comfy_server, prompt, sampler))
    assert events[-1] == "execution_interrupted", events
    assert events.count("progress") < 40
    assert_server_still_serves(comfy_server)

    follow_up = copy.deepcopy(prompt)
    follow_up[sampler]["inputs"].update(seed=124, steps=1)
    assert len(_run_and_load_images(comfy_server, follow_up)) == 1
