"""ComfyUI's template routes list and serve the pack's ``workflows/`` folder, byte for byte.

ComfyUI's ``app/custom_node_manager.py`` (0.3.64 and 0.33.0 alike) looks for a pack's templates in
``example_workflows, example, examples, workflow, workflows``: ``GET /workflow_templates`` (and its
``/api`` twin) maps each pack folder to the stems of ``<folder>/*.json`` (the ``api/`` sub-folder is not
globbed), and ``/api/workflow_templates/<pack folder>/`` serves that folder statically, so the front end
fetches ``<name>.json`` and the card's ``<name>.jpg`` from there. This pack ships them in ``workflows/``
(the name its layout fixes); the "consider renaming it to 'example_workflows'" line ComfyUI has for it is
``logging.debug``, not shown at the default log level (checked in the row's source). Runs on the shared HTTP
server in both CI rows.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from dla_harness.tree import PACK_DIR_NAME

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[3]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
SHIPPED = sorted(path.stem for path in WORKFLOWS_DIR.glob("*.json"))


def fetch(server, path: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET, read raw (no JSON parsing)."""
    with urllib.request.urlopen(server.url + path, timeout=60) as response:
        return response.status, response.headers.get_content_type(), response.read()


def test_the_pack_ships_its_workflows_in_workflows_with_a_thumbnail_each():
    assert not (REPO_ROOT / "example_workflows").exists()
    assert {"dla_flux_subject", "dla_flux_staging_compare"} <= set(SHIPPED)
    assert sorted(path.stem for path in WORKFLOWS_DIR.glob("*.jpg")) == SHIPPED


@pytest.mark.parametrize("route", ["/workflow_templates", "/api/workflow_templates"])
def test_template_list_names_every_shipped_workflow(comfy_server, route):
    status, kind, body = fetch(comfy_server, route)
    assert (status, kind) == (200, "application/json")
    listed = json.loads(body)
    # UI files only, each once: workflows/api/ is not listed.
    assert sorted(listed[PACK_DIR_NAME]) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_template_route_serves_each_workflow_file_as_shipped(comfy_server, name):
    status, kind, body = fetch(comfy_server, f"/api/workflow_templates/{PACK_DIR_NAME}/{name}.json")
    assert (status, kind) == (200, "application/json")
    assert body == (WORKFLOWS_DIR / f"{name}.json").read_bytes()


@pytest.mark.parametrize("name", SHIPPED)
def test_template_route_serves_each_thumbnail_as_shipped(comfy_server, name):
    status, kind, body = fetch(comfy_server, f"/api/workflow_templates/{PACK_DIR_NAME}/{name}.jpg")
    assert (status, kind) == (200, "image/jpeg")
    assert body == (WORKFLOWS_DIR / f"{name}.jpg").read_bytes()


def test_comfyuis_rename_advice_for_a_workflows_folder_is_a_debug_line(comfyui_path):
    """ComfyUI's "consider renaming it to 'example_workflows'" is ``logging.debug``: hidden at the default level.

    Read from this row's ``app/custom_node_manager.py`` (the server's shared log file is no evidence: another
    server may have rewritten it), together with the folder names it serves templates from.
    """
    source = (comfyui_path / "app" / "custom_node_manager.py").read_text(encoding="utf-8")
    names = re.search(r"example_workflow_folder_names\s*=\s*\[([^\]]*)\]", source)
    assert names and '"workflows"' in names.group(1), "this ComfyUI no longer serves templates from workflows/"
    calls = re.findall(r"logging\.(\w+)\(\s*(?:\"[^\"]*|'[^']*)consider renaming", source)
    assert calls == ["debug"]
