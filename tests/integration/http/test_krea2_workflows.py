"""The Krea 2 workflows (issue 21.5), end to end over HTTP on tiny models.

Each shipped ``workflows/api/krea2_*.json`` is POSTed to a real ComfyUI server (``main.py --cpu``) whose models
folder holds tiny random files under the users' file names (tests/lib/dla_tiny/krea2.py: a Krea 2 DiT whose text
fusion reads 12 x 2560, the Qwen3-VL-4B text encoder at its real width; Qwen-Image's VAE). Changes from the
shipped files (``tiny_run_prompt``, checked by a test):

* ``CLIPLoader`` -> ``DLATestTinyCLIPLoader`` (tests/integration/support/dla_test_tiny_loaders): the stock node
  with ComfyUI's model options for the tiny text encoder (the stock node builds the full Qwen3-VL-4B).
* sizes and steps (``TINY_RUN_OVERRIDES``): 64x64 latents, 3 steps, 64-pixel VAE references, 56-pixel MLLM
  references, the native compare's 1 MP reference scaling at 0.01 MP.

On a ComfyUI without Krea 2 (0.3.64) the test checks that this ComfyUI really lacks what the workflows declare
(``extra.dla_requires``: CLIPLoader type krea2) and that the pack logged its one-line Krea 2 notice.
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

WORKFLOWS = ("krea2_staged", "krea2_compare")
TINY_LOADERS_DIR = Path(__file__).resolve().parents[1] / "support" / "dla_test_tiny_loaders"
SUBSTITUTE_LOADERS = {"CLIPLoader": "DLATestTinyCLIPLoader"}
TINY_SIZE = 64
TINY_STEPS = 3
TINY_RUN_OVERRIDES = {
    "EmptySD3LatentImage": {"width": TINY_SIZE, "height": TINY_SIZE},
    "DLAStagedKSamplerAdvanced": {"steps": TINY_STEPS},
    "KSampler": {"steps": TINY_STEPS},
    "DLAReferenceLatents": {"vae_resolution": TINY_SIZE},
    "DLAKrea2JointEncode": {"mllm_resolution": 56},
    "ImageScaleToTotalPixels": {"megapixels": 0.01},
}


def ui_of(name: str) -> dict:
    return wf.load_json(wf.WORKFLOWS_DIR / f"{name}.json")


def tiny_run_prompt(name: str) -> dict:
    """The shipped API prompt with the module docstring's substitutions, nothing else."""
    prompt = wf.tiny_prompt(wf.load_json(wf.API_DIR / f"{name}.json"), {}, TINY_RUN_OVERRIDES)
    for node in prompt.values():
        node["class_type"] = SUBSTITUTE_LOADERS.get(node["class_type"], node["class_type"])
    return prompt


def _tiny_files(root: Path) -> dict[tuple[str, str], Path]:
    """(folder, user's file name) -> a tiny file standing in for it (needs ComfyUI importable: ``comfy``)."""
    from dla_tiny.cache import cached_build
    from dla_tiny.krea2 import TE_WIDTH, build_tiny_krea2_dit, build_tiny_krea2_te
    from dla_tiny.qwen_image import build_tiny_qwen_image_vae

    return {
        ("diffusion_models", "krea2_turbo_int8_convrot.safetensors"): cached_build(
            build_tiny_krea2_dit, root, seed=0, txtdim=TE_WIDTH
        ),
        ("text_encoders", "qwen3vl_4b_fp8_scaled.safetensors"): cached_build(build_tiny_krea2_te, root, seed=0),
        ("vae", "qwen_image_vae.safetensors"): cached_build(build_tiny_qwen_image_vae, root, seed=0),
    }


@pytest.fixture(scope="module")
def tiny_server(comfyui_path, tiny_models_dir, tmp_path_factory):
    """A second ComfyUI server: the pack + the test-only tiny loaders, the tiny Krea 2 files under the users' names."""
    started = []

    def get():
        if started:
            return started[0]
        tmp = tmp_path_factory.mktemp("krea2-server")
        models = dla_server.models_tree_with_user_names(tiny_models_dir, tmp / "models")
        for (folder, user_name), tiny in _tiny_files(tmp / "files").items():
            (models / folder / user_name).unlink()  # the empty placeholder the shared server lists
            (models / folder / user_name).symlink_to(tiny)
        server = dla_server.ComfyServer(
            comfyui_path, models, tmp / "base", dla_server.ARTIFACTS_DIR / "comfyui-server-krea2.log"
        )
        (server.base_dir / "custom_nodes").mkdir(parents=True)
        (server.base_dir / "custom_nodes" / TINY_LOADERS_DIR.name).symlink_to(TINY_LOADERS_DIR)
        dla_server.write_reference_image(server.base_dir / "input" / dla_server.REFERENCE_IMAGE)
        started.append(server.start())
        return server

    yield get
    for server in started:
        server.stop()


def _run_and_load_images(server, prompt: dict) -> dict[str, np.ndarray]:
    entry = server.run_prompt(prompt, timeout=900)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    images = {}
    for node_id, output in entry["outputs"].items():
        for image in output.get("images", []):
            path = server.base_dir / image["type"] / image["subfolder"] / image["filename"]
            images[node_id] = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return images


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
def test_krea2_workflow_runs_over_http_or_this_comfyui_lacks_krea2(name, request, comfy_server, tiny_server):
    requires = wf.workflow_requirements(ui_of(name))
    assert requires is not None and requires["clip_types"] == ["krea2"], f"{name} declares no Krea 2 requirement"
    facts = comfy_server.object_info(), comfy_server.get_json("/system_stats")["system"]["comfyui_version"]
    unmet = wf.unmet_requirements(requires, *facts)
    request.getfixturevalue("comfy")  # ComfyUI in this process: the tiny DiT is its module tree
    if unmet:
        assert unmet == ["CLIPLoader type krea2"], unmet
        from dla_harness.in_process import pack_module

        notice = pack_module("nodes.compat").krea2_missing_message()
        assert notice in comfy_server.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return
    prompt = tiny_run_prompt(name)
    images = _run_and_load_images(tiny_server(), prompt)
    saved = set(wf.nodes_of_type(prompt, "SaveImage"))
    assert saved <= set(images)
    for node_id in saved:
        image = images[node_id]
        assert image.shape == (TINY_SIZE, TINY_SIZE, 3)
        assert np.isfinite(image).all() and image.std() > 1.0  # not blank
    if name == "krea2_staged":
        (preview,) = wf.nodes_of_type(prompt, "PreviewImage")  # the Krea 2 Layer Map
        assert images[preview].shape == (512, 768, 3)
    else:
        native, staged = (images[node_id] for node_id in sorted(saved))
        assert (native != staged).any(), "native and staged graphs gave the same image"
