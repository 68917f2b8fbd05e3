"""A DLA + LoRA trained on FLUX.2 [klein] runs through the pack's nodes in ComfyUI, over HTTP (issue 19).

A tiny [klein]-like FLUX.2 in ComfyUI's file layout (no guidance embedding, context 192 = 3 x the tiny
Qwen3-VL's 64) is trained a few steps by ``dla_core.train`` (prepare -> train -> export: the trainer loads
that same file), with the tiny FLUX.2 training world's Qwen3-VL, data set and identity DLA
(tests/lib/dla_tiny/flux2_training.py). A ComfyUI server (``main.py --cpu``) then gets the exported files in
its own folders (``models/dla``, ``models/loras``, the DiT in ``models/diffusion_models``, the Qwen3-VL folder
in ``models/mllm``, a tiny FLUX.2 VAE) and runs, from a POSTed prompt:
UNETLoader -> LoraLoaderModelOnly; MLLM Loader -> MLLM Joint Encode -> DLA Loader -> Dual Layer Aggregation
-> Reference Latents (DLA) -> Staged Guider (Advanced) -> SamplerCustomAdvanced -> VAE Decode -> Save Image.

The same server also has the trained files under the names the shipped workflow
``workflows/api/flux2_klein_dla_subject.json`` uses (the paper's pipeline on [klein] 4B with Qwen3-VL-4B), and
runs it with only the sizes and steps shrunk (``KLEIN_DLA_TINY_OVERRIDES``, checked by a test).

On the oldest row (ComfyUI 0.3.64, diffusers 0.35) FLUX.2 exists on neither side: the tests assert the
version messages instead, and that this ComfyUI lacks what the workflow declares (``extra.dla_requires``: the
FLUX.2 node types) and that the pack logged its one-line FLUX.2 notice.
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

SIZE = 64
DIT = "tiny_flux2_klein_trained_base.safetensors"
LORA = "dla_flux2_klein_tiny_lora.safetensors"
DLA = "dla_flux2_klein_tiny.safetensors"
MLLM = "tiny-Qwen3-VL"
VAE = "tiny_flux2_vae.safetensors"
KLEIN_DLA_WORKFLOW = "flux2_klein_dla_subject"
# The trained tiny files under the names the shipped workflow uses.
USER_NAMES = {
    DIT: ("diffusion_models", "flux-2-klein-4b-fp8.safetensors"),
    LORA: ("loras", "dla_qwen3-vl-4b_flux2-klein-4b_lora.safetensors"),
    DLA: ("dla", "dla_qwen3-vl-4b_flux2-klein-4b.safetensors"),
    MLLM: ("mllm", "Qwen3-VL-4B-Instruct"),
    VAE: ("vae", "flux2-vae.safetensors"),
}
# Everything else of the shipped workflow runs as shipped.
KLEIN_DLA_TINY_OVERRIDES = {
    "EmptyFlux2LatentImage": {"width": SIZE, "height": SIZE},
    "Flux2Scheduler": {"steps": 3, "width": SIZE, "height": SIZE},
    "DLAReferenceLatents": {"vae_resolution": SIZE},
    "DLAMLLMJointEncode": {"image_size": 56},
}


def _flux2_missing() -> bool:
    """True (after asserting the messages) where this row has no FLUX.2 in ComfyUI or diffusers."""
    from tiny_flux2 import comfy_has_flux2

    from dla_core.flux.flux2 import flux2_diffusers_problem

    problem = flux2_diffusers_problem()
    if comfy_has_flux2() and problem is None:
        return False
    assert problem is None or "need diffusers >=" in problem
    return True


@pytest.fixture(scope="module")
def trained(comfy, tmp_path_factory):
    """(the world folder, the export folder, the DiT file) of a short FLUX.2 [klein] training run."""
    if _flux2_missing():
        return None
    import torch
    from tiny_flux2 import build_tiny_flux2

    from dla_core.train.config import config_from_dict
    from dla_core.train.prepare import prepare_cache
    from dla_core.train.trainer import train
    from dla_tiny.flux2_training import TINY_MLLM_WIDTH, build_tiny_flux2_training_world, tiny_flux2_run_config

    root = build_tiny_flux2_training_world(tmp_path_factory.mktemp("flux2-http-world"), "klein", "qwen3_vl")
    dit = build_tiny_flux2(root / DIT, seed=4, context_width=3 * TINY_MLLM_WIDTH, guidance=False, dtype=torch.float32)
    raw = tiny_flux2_run_config(stage1_steps=2, stage2_steps=2)
    raw["model"]["flux"] = str(dit)  # ComfyUI's own file layout: the trainer and ComfyUI read the same file
    config = config_from_dict(raw, base_dir=root)
    prepare_cache(config, rank=0, world_size=1, progress=False)
    result = train(config)
    return root, result.export_dir, dit


@pytest.fixture(scope="module")
def server(trained, comfyui_path, tiny_models_dir, tmp_path_factory):
    if trained is None:
        yield None
        return
    from dla_tiny.flux import build_tiny_flux2_vae

    root, export, dit = trained
    tmp = tmp_path_factory.mktemp("flux2-http-server")
    models = dla_server.models_tree_with_user_names(tiny_models_dir, tmp / "models", user_names=False)
    links = {
        ("diffusion_models", DIT): dit,
        ("loras", LORA): export / "lora.safetensors",
        ("dla", DLA): export / "dla.safetensors",
        ("mllm", MLLM): root / "mllm",
        ("vae", VAE): build_tiny_flux2_vae(tmp / VAE),
    }
    links.update({USER_NAMES[name]: target for (_, name), target in links.items()})
    for (folder, name), target in links.items():
        (models / folder).mkdir(parents=True, exist_ok=True)
        (models / folder / name).symlink_to(target, target_is_directory=target.is_dir())
    comfy_server = dla_server.ComfyServer(
        comfyui_path, models, tmp / "base", dla_server.ARTIFACTS_DIR / "comfyui-server-flux2-trained.log"
    )
    dla_server.write_reference_image(comfy_server.base_dir / "input" / dla_server.REFERENCE_IMAGE)
    comfy_server.start()
    yield comfy_server
    comfy_server.stop()


def trained_dla_prompt() -> dict:
    """The paper's pipeline on FLUX.2 [klein] with the trained files (API format)."""
    prompt = "The subject from the reference sitting on a bench in a park."
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": DIT, "weight_dtype": "default"}},
        "2": {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"lora_name": LORA, "strength_model": 1.0, "model": ["1", 0]},
        },
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "4": {"class_type": "LoadImage", "inputs": {"image": dla_server.REFERENCE_IMAGE}},
        "5": {"class_type": "DLAMLLMLoader", "inputs": {"mllm_name": MLLM, "dtype": "auto", "device": "default"}},
        "6": {
            "class_type": "DLAMLLMJointEncode",
            "inputs": {"prompt": prompt, "image_size": 56, "mllm": ["5", 0], "image": ["4", 0]},
        },
        "7": {"class_type": "DLALoader", "inputs": {"dla_name": DLA}},
        "8": {
            "class_type": "DLAAggregate",
            "inputs": {"guidance": 2.5, "dla": ["7", 0], "mllm_features": ["6", 0], "model": ["2", 0]},
        },
        "9": {
            "class_type": "DLAReferenceLatents",
            "inputs": {
                "vae_resolution": SIZE,
                "reference_latents_method": "model's own method (leave unset)",
                "vae_resolutions": "",
                "conditioning": ["8", 0],
                "vae": ["3", 0],
                "image1": ["4", 0],
            },
        },
        "10": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "11": {"class_type": "RandomNoise", "inputs": {"noise_seed": 42}},
        "12": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "13": {"class_type": "Flux2Scheduler", "inputs": {"steps": 3, "width": SIZE, "height": SIZE}},
        "14": {
            "class_type": "DLAStagedGuiderAdvanced",
            "inputs": {
                "cfg": 1.0,
                "tau1": 0.95,
                "tau2": 0.85,
                "reference_timing": "",
                "model": ["2", 0],
                "positive_stage1": ["8", 0],
                "positive_stage2": ["9", 0],
            },
        },
        "15": {
            "class_type": "SamplerCustomAdvanced",
            "inputs": {
                "noise": ["11", 0],
                "guider": ["14", 0],
                "sampler": ["12", 0],
                "sigmas": ["13", 0],
                "latent_image": ["10", 0],
            },
        },
        "16": {"class_type": "VAEDecode", "inputs": {"samples": ["15", 0], "vae": ["3", 0]}},
        "17": {"class_type": "SaveImage", "inputs": {"filename_prefix": "flux2_trained_dla", "images": ["16", 0]}},
    }


def test_trained_flux2_dla_and_lora_run_through_the_nodes_over_http(server, trained):
    if server is None:
        return
    from dla_core.checkpoint import read_dla_config

    _, export, _ = trained
    assert read_dla_config(export / "dla.safetensors").target == "flux2_klein"
    entry = server.run_prompt(trained_dla_prompt(), timeout=900)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    files = server.output_files(entry)
    assert len(files) == 1
    image = np.asarray(Image.open(files[0]).convert("RGB"), dtype=np.float32)
    assert image.shape == (SIZE, SIZE, 3) and image.std() > 1.0  # a picture, not a constant
    assert Path(files[0]).name.startswith("flux2_trained_dla")


def klein_dla_tiny_prompt() -> dict:
    """The shipped workflow with the trained tiny files (same names on this server), sizes and steps shrunk."""
    return wf.tiny_prompt(wf.load_json(wf.API_DIR / f"{KLEIN_DLA_WORKFLOW}.json"), {}, KLEIN_DLA_TINY_OVERRIDES)


def test_klein_dla_workflow_tiny_run_changes_only_sizes_and_steps():
    shipped = wf.without_meta(wf.load_json(wf.API_DIR / f"{KLEIN_DLA_WORKFLOW}.json"))
    tiny = klein_dla_tiny_prompt()
    assert set(tiny) == set(shipped)
    for node_id, node in shipped.items():
        assert tiny[node_id]["class_type"] == node["class_type"]
        differing = {k for k in node["inputs"] if node["inputs"][k] != tiny[node_id]["inputs"][k]}
        assert differing <= set(KLEIN_DLA_TINY_OVERRIDES.get(node["class_type"], {})), (node_id, differing)
    named = {value for node in shipped.values() for value in node["inputs"].values() if isinstance(value, str)}
    assert {name for _, name in USER_NAMES.values()} <= named


def test_klein_dla_workflow_runs_over_http_or_this_comfyui_lacks_flux2(server, trained, comfy_server, request):
    requires = wf.workflow_requirements(wf.load_json(wf.WORKFLOWS_DIR / f"{KLEIN_DLA_WORKFLOW}.json"))
    assert requires is not None and requires["notice"] == wf.FLUX2_NOTICE
    object_info = comfy_server.object_info()
    version = comfy_server.get_json("/system_stats")["system"]["comfyui_version"]
    unmet = wf.unmet_requirements(requires, object_info, version)
    if unmet:  # 0.3.64: the FLUX.2 node types are really missing, and the user is told
        request.getfixturevalue("comfy")  # the pack loaded in this process words the notice
        assert {f"node type {t}" for t in requires["node_types"]} <= set(unmet), unmet
        log = comfy_server.log_path.read_text(encoding="utf-8", errors="replace")
        assert wf.flux2_notice(version) in log.splitlines(), "the pack did not log its FLUX.2 notice"
        assert server is None  # and no FLUX.2 to train on either
        return
    assert server is not None, "this ComfyUI has FLUX.2 [klein] but the trained files were not built"
    entry = server.run_prompt(klein_dla_tiny_prompt(), timeout=900)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    (file,) = server.output_files(entry)
    image = np.asarray(Image.open(file).convert("RGB"), dtype=np.float32)
    assert image.shape == (SIZE, SIZE, 3) and np.isfinite(image).all() and image.std() > 1.0
    assert Path(file).name.startswith(KLEIN_DLA_WORKFLOW)
