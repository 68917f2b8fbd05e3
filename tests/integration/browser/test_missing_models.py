"""On a ComfyUI without the model files, the real front end lists the ones a shipped workflow needs, with their
folders and download links (issue 11.3).

The loader nodes of workflows/*.json carry ``properties.models`` ({name, url, directory}, what ComfyUI's
own templates carry). check_missing_models.js loads one workflow per model family into the front end of a second
server (``server_without_user_models``: the tiny models under their own names only, none of the names the
workflows use) and reports the list the front end shows: front end 1.27.10 (ComfyUI 0.3.64) in its "Missing
Models" dialog ("<folder> / <name>", "Download", "Copy URL"), 1.49.6 (ComfyUI 0.33.0) in the Errors tab of the
right-hand panel (name, folder, "Download", "Copy URL"). No network: the buttons' clipboard writes and opened
links are recorded, not followed. Screenshots land in test-artifacts/screenshots/missing_models_<name>.png; with
DLA_UPDATE_DOCS_SCREENSHOT=1 the subject workflow's is copied to docs/images/missing_models.png (the README's).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import ci_guard  # tests/lib/ci_guard.py
import pytest
from dla_harness import server as dla_server
from dla_harness import workflow_prompts as wf

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[3]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
SCRIPT = Path(__file__).with_name("check_missing_models.js")
SCREENSHOT_DIR = REPO_ROOT / "test-artifacts" / "screenshots"
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "images" / "missing_models.png"
README_WORKFLOW = "dla_flux_subject"

# What each workflow needs that anyone can download, by folder (written out here, not read from the files).
EXPECTED = {
    "dla_flux_subject": {
        "flux1-dev.safetensors": "diffusion_models",
        "ae.safetensors": "vae",
    },
    "flux_kontext_staged": {
        "flux1-dev-kontext_fp8_scaled.safetensors": "diffusion_models",
        "clip_l.safetensors": "text_encoders",
        "t5xxl_fp8_e4m3fn_scaled.safetensors": "text_encoders",
        "ae.safetensors": "vae",
    },
    "qwen_image_edit_2509_staged": {
        "qwen_image_edit_2509_fp8_e4m3fn.safetensors": "diffusion_models",
        "qwen_2.5_vl_7b_fp8_scaled.safetensors": "text_encoders",
        "qwen_image_vae.safetensors": "vae",
    },
    "qwen_image_edit_2511_staged": {
        "qwen_image_edit_2511_fp8mixed.safetensors": "diffusion_models",
        "qwen_2.5_vl_7b_fp8_scaled.safetensors": "text_encoders",
        "qwen_image_vae.safetensors": "vae",
    },
    "flux2_dev_staged": {
        "flux2_dev_fp8mixed.safetensors": "diffusion_models",
        "mistral_3_small_flux2_fp8.safetensors": "text_encoders",
        "flux2-vae.safetensors": "vae",
    },
    "flux2_klein_staged": {
        "flux-2-klein-4b-fp8.safetensors": "diffusion_models",
        "qwen_3_4b.safetensors": "text_encoders",
        "flux2-vae.safetensors": "vae",
    },
    "flux2_klein_dla_subject": {
        "flux-2-klein-4b-fp8.safetensors": "diffusion_models",
        "flux2-vae.safetensors": "vae",
    },
}
# The pack's own files (trained DLA + its LoRA): no download link. Front end 1.49 lists them anyway (it
# scans every model-file combo), 1.27 only lists files that carry metadata.
PACK_ONLY = {
    "dla_internvl3-8b_flux1-dev.safetensors",
    "dla_internvl3-8b_flux1-dev_lora.safetensors",
    "dla_qwen3-vl-4b_flux2-klein-4b.safetensors",
    "dla_qwen3-vl-4b_flux2-klein-4b_lora.safetensors",
}


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def checked_on_this_comfyui() -> list[str]:
    """The workflows of EXPECTED whose declared first ComfyUI release (extra.dla_requires.min_comfyui) is not
    newer than the ComfyUI under test (0.3.64: not the FLUX.2 ones); known at collection, so no test skips."""
    comfyui, _ = ci_guard.find_comfyui()
    version = ci_guard.comfyui_version(comfyui) if comfyui else "unknown"
    names = []
    for name in sorted(EXPECTED):
        requires = wf.workflow_requirements(json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())) or {}
        minimum = requires.get("min_comfyui")
        if not minimum or version == "unknown" or _release(version) >= _release(minimum):
            names.append(name)
    return names


CHECKED_HERE = checked_on_this_comfyui()


@pytest.fixture(scope="module")
def server_without_user_models(browser_ready, comfyui_path, tiny_models_dir):
    yield from dla_server.server_without_user_models_fixture(comfyui_path, tiny_models_dir)


@pytest.fixture(scope="module")
def workflows_here(server_without_user_models) -> list[str]:
    """The workflows of EXPECTED this ComfyUI has every node type for (0.3.64: no FLUX.2 nodes)."""
    info = server_without_user_models.object_info()
    here = []
    for name in EXPECTED:
        requires = wf.workflow_requirements(json.loads((WORKFLOWS_DIR / f"{name}.json").read_text()))
        if all(t in info for t in (requires or {}).get("node_types", [])):
            here.append(name)
    return here


@pytest.fixture(scope="module")
def report(server_without_user_models, workflows_here) -> dict:
    files = [str(WORKFLOWS_DIR / f"{name}.json") for name in workflows_here]
    command = ["node", str(SCRIPT), server_without_user_models.url, str(SCREENSHOT_DIR), *files]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"check_missing_models.js failed:\n{done.stderr[-4000:]}"
    out = json.loads(done.stdout)
    (REPO_ROOT / "test-artifacts" / "missing-models-report.json").write_text(json.dumps(out, indent=1))
    out["results"] = {Path(path).stem: result for path, result in out["results"].items()}
    return out


def embedded_models(name: str) -> dict[str, dict]:
    """name -> {name, url, directory} of the workflow's loader nodes' properties.models."""
    graph = json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())
    return {m["name"]: m for node in graph["nodes"] for m in node.get("properties", {}).get("models", [])}


def test_front_end_is_this_rows_package(report):
    assert report["frontend_version"] == metadata.version("comfyui-frontend-package")


def test_every_family_is_checked_on_this_row(workflows_here):
    assert {"dla_flux_subject", "flux_kontext_staged", "qwen_image_edit_2509_staged"} <= set(workflows_here)
    if metadata.version("comfyui-frontend-package") != "1.27.10":  # ComfyUI 0.33: FLUX.2 too
        assert set(workflows_here) == set(EXPECTED)
    # the release each workflow declares agrees with the node types this ComfyUI really has
    assert sorted(workflows_here) == CHECKED_HERE


@pytest.mark.parametrize("name", CHECKED_HERE)
def test_front_end_lists_the_missing_files_with_folder_and_link(report, workflows_here, name):
    result = report["results"][name]
    assert "error" not in result, result
    # 1.27: "Missing Models" dialog; 1.49: "Missing Models" group of the Errors tab
    assert result["kind"] == ("dialog" if report["frontend_version"] == "1.27.10" else "errors-panel")
    assert "Missing Models" in result["text"]
    rows = {row["name"]: row for row in result["rows"]}
    assert len(rows) == len(result["rows"]), result["rows"]  # each file once
    embedded = embedded_models(name)
    for file_name, folder in EXPECTED[name].items():
        assert file_name in rows, f"{file_name} not listed: {result['text']}"
        row = rows[file_name]
        assert row["directory"] == folder, row
        assert row["download_enabled"], row  # a download button, usable
        assert file_name in embedded, f"{file_name}: no properties.models entry in {name}.json"
        url = embedded[file_name]["url"]
        assert url.startswith("https://huggingface.co/") and url.endswith("/" + file_name)
        if result["kind"] == "dialog":
            # 1.27: Copy URL copies the URL; Download opens it, or (its size look-up failed: no network
            # here) the Hugging Face repository page the file is in
            assert row["copied_url"] == url
            assert row["download_href"] == url or url.startswith(row["download_href"] + "/resolve/"), row
        else:
            # 1.49: Download opens the URL; Copy URL copies the file's page (/blob/ for /resolve/)
            assert row["download_href"] == url
            assert row["copied_url"] == url.replace("/resolve/", "/blob/", 1)
    for file_name in set(rows) - set(EXPECTED[name]):  # anything else listed is the pack's own, without a link
        assert file_name in PACK_ONLY, rows[file_name]
        assert rows[file_name]["copied_url"] is None and rows[file_name]["download_href"] is None
        assert not rows[file_name]["download_enabled"]


@pytest.mark.parametrize("name", CHECKED_HERE)
def test_missing_models_screenshot_is_kept(report, workflows_here, name):
    screenshot = Path(report["results"][name]["screenshot"])
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    if name == README_WORKFLOW and os.environ.get("DLA_UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)
