"""The shipped Qwen-Image-Edit-2509 and FLUX Kontext workflows run on tiny models in a real ComfyUI.

Each ``workflows/api/<name>.json`` is queued through ComfyUI's own executor (the in-process
harness, tests/lib/dla_harness) with the files it names present under those names in a test models
folder: a tiny Qwen-Image DiT, a one-layer Qwen2.5-VL text encoder 3584 wide (the DiT's fixed text
slot; ~1.2B parameters with ComfyUI's full-size vision tower) and Qwen (Wan 2.1) VAE; for Kontext the
tiny FLUX (Kontext is the FLUX architecture), FLUX's tiny VAE and tiny CLIP-L + T5 files.

Substitutions, the ONLY differences from the shipped files (``tiny_run_prompt``; checked by
``test_tiny_run_changes_only_the_documented_inputs``):

* ``CLIPLoader`` / ``DualCLIPLoader`` -> ``DLATestTinyCLIPLoader`` / ``DLATestTinyDualCLIPLoader``
  (tests/integration/support/dla_test_tiny_loaders, installed here with ComfyUI's own
  custom-node loader, never shipped): the stock nodes' own code with ComfyUI's
  ``<model>_model_config`` model options added, because ComfyUI builds Qwen2.5-VL-7B and
  T5-XXL at full size whatever the file holds and the stock nodes pass no model options.
* sizes and steps: 64x64 latents, 3 steps, 56-pixel MLLM references, 64-pixel VAE references.
* native nodes whose preprocessing size is fixed: ``FluxKontextImageScale`` (always ~1 MP)
  becomes ``ImageScale`` to 64x64, and ``TextEncodeQwenImageEditPlus`` loses its ``vae`` link
  (its fixed ~1 MP encode through the full-size Wan VAE costs minutes on two CPU cores; the
  reference-latent path of the Qwen graphs still runs through DLAReferenceLatents).

H6's HTTP test (tests/integration/http) runs the other shipped workflows through the stock
loaders; these four need the substitutions above, so they run here.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import os
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS_DIR = Path(
    os.environ.get("DLA_WORKFLOWS_DIR", REPO_ROOT / "workflows")
)  # override: check graphs before they land
SUPPORT_NODES = Path(__file__).resolve().parent / "support" / "dla_test_tiny_loaders"
QWEN_WORKFLOWS = ("qwen_image_edit_2509_staged", "qwen_image_edit_2509_compare")
KONTEXT_WORKFLOWS = ("flux_kontext_staged", "flux_kontext_compare")
REFERENCE_IMAGE = "dla_subject_reference.png"  # what the shipped LoadImage nodes name
TINY_SIZE = 64
TINY_STEPS = 3

# Per node type: inputs the tiny run overrides (everything else runs as shipped).
TINY_OVERRIDES = {
    "EmptySD3LatentImage": {"width": TINY_SIZE, "height": TINY_SIZE},
    "KSampler": {"steps": TINY_STEPS},
    "DLAStagedKSamplerAdvanced": {"steps": TINY_STEPS},
    "DLAQwenCLIPJointEncode": {"mllm_resolution": 56},
    "DLAReferenceLatents": {"vae_resolution": TINY_SIZE},
}
SUBSTITUTE_LOADERS = {"CLIPLoader": "DLATestTinyCLIPLoader", "DualCLIPLoader": "DLATestTinyDualCLIPLoader"}


def load_api(name: str) -> dict:
    path = WORKFLOWS_DIR / "api" / f"{name}.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the Qwen-Image-Edit / Kontext workflows ship in workflows/")
    return json.loads(path.read_text(encoding="utf-8"))


def tiny_run_prompt(api: dict) -> dict:
    """The shipped API prompt with the substitutions the module docstring lists, nothing else."""
    prompt = {
        node_id: {"class_type": node["class_type"], "inputs": dict(node["inputs"])}
        for node_id, node in copy.deepcopy(api).items()
    }
    for node in prompt.values():
        kind = node["class_type"]
        node["class_type"] = SUBSTITUTE_LOADERS.get(kind, kind)
        node["inputs"].update(TINY_OVERRIDES.get(kind, {}))
        if kind == "FluxKontextImageScale":
            node["class_type"] = "ImageScale"
            node["inputs"].update(upscale_method="area", width=TINY_SIZE, height=TINY_SIZE, crop="disabled")
        if kind == "TextEncodeQwenImageEditPlus":
            node["inputs"].pop("vae", None)
    return prompt


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return sorted((i for i, node in prompt.items() if node["class_type"] == class_type), key=int)


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def stand_ins(comfy, tiny_models_dir, tiny_names, tmp_path_factory):
    """A models folder with tiny files under the users' names, registered with ComfyUI for this module."""
    import shutil

    import folder_paths

    from dla_tiny.cache import cached_build, link_tree
    from dla_tiny.flux_text_encoders import build_tiny_clip_l, build_tiny_t5xxl
    from dla_tiny.qwen_image import (
        DIT_READY_TE_CONFIG,
        build_tiny_qwen25vl_te,
        build_tiny_qwen_image_dit,
        build_tiny_qwen_image_vae,
    )

    root = tmp_path_factory.mktemp("qwen-kontext-models")
    files = root / "files"  # built here only without $DLA_TINY_MODELS_CACHE
    link_tree(
        {
            "diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors": cached_build(
                build_tiny_qwen_image_dit, files, seed=0
            ),
            # 3584 wide: the Qwen-Image DiT's text slot is fixed (the loaders build it with DIT_READY_TE_CONFIG too).
            "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors": cached_build(
                build_tiny_qwen25vl_te, files, seed=0, config=DIT_READY_TE_CONFIG
            ),
            "vae/qwen_image_vae.safetensors": cached_build(build_tiny_qwen_image_vae, files, seed=0),
            "text_encoders/clip_l.safetensors": cached_build(build_tiny_clip_l, files, seed=0),
            "text_encoders/t5xxl_fp8_e4m3fn_scaled.safetensors": cached_build(build_tiny_t5xxl, files, seed=0),
            "diffusion_models/flux1-dev-kontext_fp8_scaled.safetensors": tiny_models_dir
            / "diffusion_models"
            / tiny_names.flux,
            "vae/ae.safetensors": tiny_models_dir / "vae" / tiny_names.vae,
        },
        root,
    )
    shutil.copyfile(comfy.base_dir / "input" / tiny_names.reference, comfy.base_dir / "input" / REFERENCE_IMAGE)
    registered = []
    for folder in ("diffusion_models", "text_encoders", "vae"):
        folder_paths.add_model_folder_path(folder, str(root / folder))
        registered.append((folder, str(root / folder)))
    yield root
    for folder, path in registered:
        folder_paths.folder_names_and_paths[folder][0].remove(path)


@pytest.fixture(scope="module")
def tiny_loaders(comfy):
    """The test-only loader nodes, installed with ComfyUI's own custom-node loader."""
    import nodes as comfy_nodes

    if not all(node_id in comfy_nodes.NODE_CLASS_MAPPINGS for node_id in SUBSTITUTE_LOADERS.values()):
        assert asyncio.run(comfy_nodes.load_custom_node(str(SUPPORT_NODES)))
    return SUBSTITUTE_LOADERS


@pytest.fixture
def run_workflow(comfy, stand_ins, tiny_loaders):
    """Queue a shipped workflow on the tiny models; frees every model afterwards (they are large)."""
    import comfy.model_management as model_management

    def run(name: str):
        prompt = tiny_run_prompt(load_api(name))
        result = comfy.run(prompt)
        assert result.success, result.error_text
        images = {}
        for save in nodes_of(prompt, "SaveImage"):
            decode = prompt[save]["inputs"]["images"][0]
            images[save] = comfy.output(decode).clone()  # [batch, H, W, 3]
        return prompt, images

    yield run
    comfy.reset_cache()
    model_management.unload_all_models()
    model_management.soft_empty_cache()
    gc.collect()


# ----------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", QWEN_WORKFLOWS + KONTEXT_WORKFLOWS)
def test_tiny_run_changes_only_the_documented_inputs(name):
    shipped = load_api(name)
    tiny = tiny_run_prompt(shipped)
    assert set(tiny) == set(shipped)
    for node_id, node in shipped.items():
        kind, changed = node["class_type"], tiny[node_id]
        allowed = set(TINY_OVERRIDES.get(kind, {}))
        if kind == "FluxKontextImageScale":
            assert changed["class_type"] == "ImageScale" and changed["inputs"]["image"] == node["inputs"]["image"]
            continue
        if kind == "TextEncodeQwenImageEditPlus":
            allowed.add("vae")
        assert changed["class_type"] == SUBSTITUTE_LOADERS.get(kind, kind)
        differing = {
            key
            for key in set(node["inputs"]) | set(changed["inputs"])
            if node["inputs"].get(key) != changed["inputs"].get(key)
        }
        assert differing <= allowed, (node_id, kind, differing)


@pytest.mark.parametrize("name", QWEN_WORKFLOWS + KONTEXT_WORKFLOWS)
def test_workflow_runs_on_tiny_models_to_a_non_blank_image_per_save_node(run_workflow, name):
    prompt, images = run_workflow(name)
    assert len(images) == len(nodes_of(prompt, "SaveImage")) >= 1
    for image in images.values():
        assert image.shape == (1, TINY_SIZE, TINY_SIZE, 3)
        assert torch.isfinite(image).all()
        assert float(image.std()) > 1e-3  # not a blank image
    if name.endswith("_compare"):
        native, staged = images.values()
        assert not torch.equal(native, staged), "native and staged graphs gave the same image"
