"""The FLUX.2 [dev] / [klein] and Qwen-Image-Edit-2511 workflows, end to end over HTTP on tiny models.

Each shipped ``workflows/api/<name>.json`` is POSTed to a real ComfyUI server (``main.py --cpu``) whose
models folder holds tiny random files under the users' file names: tiny FLUX.2 DiTs (text width 15360 =
3 x Mistral-3 for [dev], 7680 = 3 x Qwen3-4B for [klein]; tests/integration/tiny_flux2.py), tiny FLUX.2
text encoders and VAE (tests/lib/dla_tiny), a tiny Qwen-Image-Edit-2511 DiT (``__index_timestep_zero__``),
Qwen2.5-VL text encoder and VAE. Changes from the shipped files (``tiny_run_prompt``, checked by a test):

* ``CLIPLoader`` -> ``DLATestTinyCLIPLoader`` (tests/integration/support/dla_test_tiny_loaders, installed in
  this server's custom_nodes only): the stock node with ComfyUI's model options for the tiny text encoders
  (the stock node builds Mistral-Small-3 24B / Qwen3-4B / Qwen2.5-VL-7B whatever the file holds).
* sizes and steps (``TINY_RUN_OVERRIDES``): 64x64 latents, 3 steps, 64-pixel VAE references, 56-pixel MLLM
  references, the native compare's 1 MP reference scaling at 0.01 MP.

Every workflow declares what it needs from ComfyUI (``extra.dla_requires`` in its UI file). On a ComfyUI that
lacks it (0.3.64: no FLUX.2, no index_timestep_zero) the test checks, on the shared server, that this ComfyUI
really lacks what is declared and that the user is told (the pack's one-line FLUX.2 notice in the server log;
for 2511 the documented fallback note of Reference Latents (DLA)), instead of running the graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dla_harness import server as dla_server
from dla_harness import workflow_prompts as wf
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKFLOWS = ("flux2_dev_staged", "flux2_klein_staged", "flux2_dev_compare", "qwen_image_edit_2511_staged")
TINY_LOADERS_DIR = Path(__file__).resolve().parents[1] / "support" / "dla_test_tiny_loaders"
SUBSTITUTE_LOADERS = {"CLIPLoader": "DLATestTinyCLIPLoader"}
TINY_SIZE = 64
TINY_STEPS = 3
TINY_RUN_OVERRIDES = {
    "EmptyFlux2LatentImage": {"width": TINY_SIZE, "height": TINY_SIZE},
    "EmptySD3LatentImage": {"width": TINY_SIZE, "height": TINY_SIZE},
    "Flux2Scheduler": {"steps": TINY_STEPS, "width": TINY_SIZE, "height": TINY_SIZE},
    "DLAStagedKSamplerAdvanced": {"steps": TINY_STEPS},
    "DLAReferenceLatents": {"vae_resolution": TINY_SIZE},
    "DLAQwenCLIPJointEncode": {"mllm_resolution": 56},
    "ImageScaleToTotalPixels": {"megapixels": 0.01},
}
FLUX2_DEV_TEXT_WIDTH = 3 * 5120  # FLUX.2 [dev] reads 3 Mistral-3 layers
FLUX2_KLEIN_TEXT_WIDTH = 3 * 2560  # [klein] 4B reads 3 Qwen3-4B layers


def ui_of(name: str) -> dict:
    return wf.load_json(wf.WORKFLOWS_DIR / f"{name}.json")


def tiny_run_prompt(name: str) -> dict:
    """The shipped API prompt with the module docstring's substitutions, nothing else."""
    prompt = wf.tiny_prompt(wf.load_json(wf.API_DIR / f"{name}.json"), {}, TINY_RUN_OVERRIDES)
    for node in prompt.values():
        node["class_type"] = SUBSTITUTE_LOADERS.get(node["class_type"], node["class_type"])
    return prompt


def comfyui_version(server) -> str:
    return server.get_json("/system_stats")["system"]["comfyui_version"]


def server_log(server) -> str:
    """The server's log (its first line is the command, with the server's own port)."""
    text = server.log_path.read_text(encoding="utf-8", errors="replace")
    assert f"--port {server.port}" in text.splitlines()[0], f"{server.log_path} was overwritten by another server"
    return text


# ----------------------------------------------------------------------------------- the tiny server
def _tiny_files(root: Path) -> dict[tuple[str, str], Path]:
    """(folder, user's file name) -> a tiny file standing in for it, built under ``root`` (or cached).

    Needs ComfyUI importable (the tiny FLUX.2 DiT is ComfyUI's own module tree): the ``comfy`` fixture.
    """
    from tiny_flux2 import build_tiny_flux2

    from dla_tiny.cache import cached_build
    from dla_tiny.flux import build_tiny_flux2_vae
    from dla_tiny.flux2_text_encoders import build_tiny_mistral3_te, build_tiny_qwen3_4b_te
    from dla_tiny.qwen_image import (
        DIT_READY_TE_CONFIG,
        build_tiny_qwen25vl_te,
        build_tiny_qwen_image_dit,
        build_tiny_qwen_image_vae,
    )

    return {
        ("diffusion_models", "flux2_dev_fp8mixed.safetensors"): cached_build(
            build_tiny_flux2, root, seed=0, context_width=FLUX2_DEV_TEXT_WIDTH, guidance=True
        ),
        ("diffusion_models", "flux-2-klein-4b-fp8.safetensors"): cached_build(
            build_tiny_flux2, root, seed=1, context_width=FLUX2_KLEIN_TEXT_WIDTH, guidance=False
        ),
        ("text_encoders", "mistral_3_small_flux2_fp8.safetensors"): cached_build(build_tiny_mistral3_te, root),
        ("text_encoders", "qwen_3_4b.safetensors"): cached_build(build_tiny_qwen3_4b_te, root),
        ("vae", "flux2-vae.safetensors"): cached_build(build_tiny_flux2_vae, root),
        ("diffusion_models", "qwen_image_edit_2511_fp8mixed.safetensors"): cached_build(
            build_tiny_qwen_image_dit, root, seed=0, index_timestep_zero=True
        ),
        # 3584 wide: the Qwen-Image DiT's text slot is fixed (the tiny loader builds it with DIT_READY_TE_CONFIG).
        ("text_encoders", "qwen_2.5_vl_7b_fp8_scaled.safetensors"): cached_build(
            build_tiny_qwen25vl_te, root, seed=0, config=DIT_READY_TE_CONFIG
        ),
        ("vae", "qwen_image_vae.safetensors"): cached_build(build_tiny_qwen_image_vae, root, seed=0),
    }


@pytest.fixture(scope="module")
def tiny_server(comfyui_path, tiny_models_dir, tmp_path_factory):
    """A second ComfyUI server: the pack + the test-only tiny loaders, the tiny files under the users' names.

    Started on first use (only where some workflow's requirements are met; the caller has the ``comfy``
    fixture, which makes ComfyUI importable for the tiny FLUX.2 DiT); stopped after the module.
    """
    started = []

    def get():
        if started:
            return started[0]
        tmp = tmp_path_factory.mktemp("flux2-qwen2511-server")
        models = dla_server.models_tree_with_user_names(tiny_models_dir, tmp / "models")
        for (folder, user_name), tiny in _tiny_files(tmp / "files").items():
            (models / folder / user_name).unlink()  # the empty placeholder the shared server lists
            (models / folder / user_name).symlink_to(tiny)
        server = dla_server.ComfyServer(
            comfyui_path, models, tmp / "base", dla_server.ARTIFACTS_DIR / "comfyui-server-flux2-qwen2511.log"
        )
        (server.base_dir / "custom_nodes").mkdir(parents=True)
        (server.base_dir / "custom_nodes" / TINY_LOADERS_DIR.name).symlink_to(TINY_LOADERS_DIR)
        dla_server.write_reference_image(server.base_dir / "input" / dla_server.REFERENCE_IMAGE)
        dla_server.write_reference_image(
            server.base_dir / "input" / dla_server.SECOND_REFERENCE_IMAGE, size=(64, 40), seed=1
        )
        started.append(server.start())
        return server

    yield get
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def shared_facts(comfy_server):
    """The shared server's /object_info and ComfyUI version."""
    return comfy_server.object_info(), comfyui_version(comfy_server)


def _run_and_load_images(server, prompt: dict) -> dict[str, np.ndarray]:
    entry = server.run_prompt(prompt, timeout=900)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    images = {}
    for node_id, output in entry["outputs"].items():
        for image in output.get("images", []):
            path = server.base_dir / image["type"] / image["subfolder"] / image["filename"]
            images[node_id] = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return images


def _assert_comfyui_lacks_what_is_declared(name: str, requires: dict, unmet: list[str], server, facts) -> None:
    """On a ComfyUI without the workflow's needs: they are really missing, and the user is told."""
    object_info, version = facts
    declared = (
        [f"node type {t}" for t in requires["node_types"]]
        + [f"CLIPLoader type {t}" for t in requires["clip_types"]]
        + [f"reference method {m}" for m in requires["reference_latents_methods"]]
    )
    # Everything declared is missing here (not just some of it: the declaration names a whole family).
    assert set(declared) <= set(unmet), (name, declared, unmet)
    if requires["notice"] == wf.FLUX2_NOTICE:
        assert wf.flux2_notice(version) in server_log(server).splitlines(), "the pack did not log its FLUX.2 notice"
    if "index_timestep_zero" in requires["reference_latents_methods"]:
        from dla_core.qwen_template import resolve_reference_method

        methods = wf.combo_options(object_info, "FluxKontextMultiReferenceLatentMethod", "reference_latents_method")
        method, note = resolve_reference_method("auto", "qwen_image_edit_2511", tuple(methods))
        assert method == "index" and "index_timestep_zero" in note and "Update ComfyUI" in note


# ----------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", WORKFLOWS)
def test_tiny_run_changes_only_the_documented_inputs(name):
    shipped = wf.without_meta(wf.load_json(wf.API_DIR / f"{name}.json"))
    tiny = tiny_run_prompt(name)
    assert set(tiny) == set(shipped)
    for node_id, node in shipped.items():
        kind, changed = node["class_type"], tiny[node_id]
        assert changed["class_type"] == SUBSTITUTE_LOADERS.get(kind, kind)
        differing = {
            k for k in set(node["inputs"]) | set(changed["inputs"]) if node["inputs"].get(k) != changed["inputs"].get(k)
        }
        assert differing <= set(TINY_RUN_OVERRIDES.get(kind, {})), (node_id, kind, differing)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_runs_over_http_or_this_comfyui_lacks_what_it_declares(
    name, request, comfy_server, shared_facts, tiny_server
):
    requires = wf.workflow_requirements(ui_of(name))
    assert requires is not None, f"{name} declares no extra.dla_requires"
    unmet = wf.unmet_requirements(requires, *shared_facts)
    # ComfyUI in this process too: the tiny FLUX.2 DiT is its module tree; the pack it loaded words the notice.
    request.getfixturevalue("comfy")
    if unmet:
        _assert_comfyui_lacks_what_is_declared(name, requires, unmet, comfy_server, shared_facts)
        return
    prompt = tiny_run_prompt(name)
    images = _run_and_load_images(tiny_server(), prompt)
    assert set(images) == set(wf.nodes_of_type(prompt, "SaveImage"))
    for image in images.values():
        assert image.shape == (TINY_SIZE, TINY_SIZE, 3)
        assert np.isfinite(image).all() and image.std() > 1.0  # not blank
    if name.endswith("_compare"):
        native, staged = images.values()
        # Same seed, noise, sampler, sigmas and latent; the staged graph's first step (t = 1 >= tau1) runs without
        # the references. (On a tiny random DiT one step changes the picture only a little.)
        assert (native != staged).any(), "native and staged graphs gave the same image"
