"""ComfyUI's real front end (the comfyui-frontend-package the server serves), in headless Debian
Chromium driven by playwright-core, loads every shipped workflow without a warning.

check_workflows.js does the browser work once for all workflows (plus one deliberately broken
copy that proves the missing-node check sees what a person would see) and reports JSON; the
tests below judge that report. Screenshots land in test-artifacts/screenshots/. With
DLA_UPDATE_DOCS_SCREENSHOT=1 the subject workflow's screenshot is copied to
docs/images/workflow.png (the README's picture).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from dla_harness import workflow_prompts as wf

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[3]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
API_DIR = WORKFLOWS_DIR / "api"
SCRIPT = Path(__file__).with_name("check_workflows.js")
SCREENSHOT_DIR = REPO_ROOT / "test-artifacts" / "screenshots"
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "images" / "workflow.png"
README_WORKFLOW = "dla_flux_subject"
UNKNOWN_NODE_TYPE = "DLANodeThatDoesNotExist"
WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.json"))


def without_meta(prompt: dict) -> dict:
    return {node_id: {"inputs": node["inputs"], "class_type": node["class_type"]} for node_id, node in prompt.items()}


@pytest.fixture(scope="module")
def frontend_report(browser_ready, comfy_server, tmp_path_factory) -> dict:
    """Every workflow (and one broken copy) loaded into the front end; the script's JSON report."""
    broken = copy.deepcopy(json.loads((WORKFLOWS_DIR / f"{README_WORKFLOW}.json").read_text()))
    broken["nodes"][-1]["type"] = UNKNOWN_NODE_TYPE
    broken_path = tmp_path_factory.mktemp("broken-workflow") / "broken_copy.json"
    broken_path.write_text(json.dumps(broken))
    command = ["node", str(SCRIPT), comfy_server.url, str(SCREENSHOT_DIR), *map(str, WORKFLOWS), str(broken_path)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"check_workflows.js failed:\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout)
    report["broken"] = report["results"].pop(str(broken_path))
    (REPO_ROOT / "test-artifacts" / "frontend-report.json").write_text(json.dumps(report, indent=1))
    return report


def result_of(report: dict, path: Path) -> dict:
    return report["results"][str(path)]


# Newer-model workflows (FLUX.2) on an older ComfyUI (0.3.64): they declare what they need (extra.dla_requires);
# there the tests check that the front end reports exactly that as missing, and nothing else.
# The 1.27 front end's missing-nodes dialog looks the types up in the node registry (no network in tests).
REGISTRY_LOOKUP_ERROR = "Failed to load resource: net::ERR_"


@pytest.fixture(scope="module")
def missing_here(comfy_server) -> dict:
    """path -> (node types, CLIPLoader types) a workflow declares and this server lacks ({} where none is lacking)."""
    info = comfy_server.object_info()
    version = comfy_server.get_json("/system_stats")["system"]["comfyui_version"]
    clip_types = wf.combo_options(info, "CLIPLoader", "type")
    out = {}
    for path in WORKFLOWS:
        requires = wf.workflow_requirements(json.loads(path.read_text()))
        types = [t for t in (requires or {}).get("node_types", []) if t not in info]
        missing_clip = [t for t in (requires or {}).get("clip_types", []) if t not in clip_types]
        if types or missing_clip:  # Krea 2 on 0.3.64: every node type is there, its CLIPLoader type is not
            assert wf.unmet_requirements(requires, info, version)
            out[path] = (types, missing_clip)
    return out


def _on_missing_type(missing_types: list[str], node: str) -> bool:
    """Whether a report entry ``"<id>:<type>"`` names a node of a missing type."""
    return node.split(":", 1)[1] in missing_types


ids = [path.stem for path in WORKFLOWS]


def test_missing_node_check_flags_an_unknown_node_type(frontend_report):
    broken = frontend_report["broken"]
    assert broken["missing_node_types"] == [UNKNOWN_NODE_TYPE]
    assert any(UNKNOWN_NODE_TYPE in text for text in broken["dialogs"]), broken["dialogs"]


def test_frontend_is_comfyuis_own_package(frontend_report):
    """The page runs the comfyui-frontend-package installed next to ComfyUI (1.27.10 on 0.3.64, 1.49.6 on 0.33.0)."""
    assert frontend_report["frontend_version"], "the page never reported its front-end version"
    assert frontend_report["frontend_version"] == metadata.version("comfyui-frontend-package")


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_workflow_loads_with_no_missing_node_and_no_dialog(frontend_report, missing_here, path):
    result = result_of(frontend_report, path)
    if missing_here.get(path, ((),))[0]:  # exactly the declared types are missing, and the front end says so
        types, _ = missing_here[path]
        assert sorted(set(result["missing_node_types"])) == sorted(types)
        assert any(all(t in text for t in types) for text in result["dialogs"]), result["dialogs"]
        assert result["toasts"] == []
        return
    assert result["missing_node_types"] == []
    assert result["dialogs"] == []
    assert result["toasts"] == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_workflow_links_join_sockets_of_matching_types(frontend_report, path):
    result = result_of(frontend_report, path)
    assert result["bad_links"] == []
    assert result["link_count"] > 0


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_workflow_dropdown_values_are_offered_by_the_server(frontend_report, missing_here, path):
    bad = result_of(frontend_report, path)["bad_widget_values"]
    if path in missing_here:  # only the declared CLIPLoader type (flux2) is not offered, where there is one
        _, clip_types = missing_here[path]
        assert bool(bad) == bool(clip_types), bad  # the FLUX.2 DLA workflow has no CLIPLoader: nothing flagged
        assert all(b["type"] == "CLIPLoader" and b["widget"] == "type" and b["value"] in clip_types for b in bad)
        return
    assert bad == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_workflow_loads_without_page_errors_or_flagged_nodes(frontend_report, missing_here, path):
    result = result_of(frontend_report, path)
    if missing_here.get(path, ((),))[0]:  # only the nodes of the missing types are flagged
        types, _ = missing_here[path]
        assert result["nodes_with_errors"] and all(_on_missing_type(types, n) for n in result["nodes_with_errors"])
        assert all(error.startswith(REGISTRY_LOOKUP_ERROR) for error in result["console_errors"])
        return
    assert result["console_errors"] == []
    assert result["nodes_with_errors"] == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_frontend_api_export_equals_the_shipped_api_file(frontend_report, missing_here, comfy_server, path):
    exported = result_of(frontend_report, path)["api_prompt"]
    shipped = without_meta(json.loads((API_DIR / path.name).read_text()))
    if path in missing_here:
        # Same nodes; a node of a missing type exports neither its type nor its values (the front end does not
        # know them); every other node keeps its type and links, and loses only the widget inputs this
        # ComfyUI's version of it does not define yet (e.g. ImageScaleToTotalPixels' resolution_steps).
        types, _ = missing_here[path]
        info = comfy_server.object_info()
        assert set(exported) == set(shipped)
        for node_id, node in shipped.items():
            got = exported[node_id]
            if node["class_type"] in types:
                assert "class_type" not in got, node_id
                continue
            assert got["class_type"] == node["class_type"]
            node_info = info[node["class_type"]]["input"]
            known = {**node_info.get("required", {}), **node_info.get("optional", {})}
            assert got["inputs"] == {k: v for k, v in node["inputs"].items() if k in known}, node_id
        return
    assert without_meta(exported) == shipped


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_workflow_screenshot_is_kept(frontend_report, path):
    screenshot = Path(result_of(frontend_report, path)["screenshot"])
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    if path.stem == README_WORKFLOW and os.environ.get("DLA_UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)
