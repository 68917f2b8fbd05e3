"""ComfyUI's template browser lists the pack's workflows with their thumbnails and opens them.

ComfyUI serves a pack's ``workflows/*.json`` at /api/workflow_templates (0.3.64 and 0.33.0 alike)
and the front end shows ``<name>.jpg`` beside each as the card's picture. check_templates.js opens the
browser as a person does (the "Templates" command), picks the pack's entry in the side list, reads every
card and the picture the browser decoded for it, and opens every workflow from its card, in headless
Chromium against the row's real front end (1.27.10 on 0.3.64, 1.49.6 on 0.33.0).
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
from dla_harness.tree import PACK_DIR_NAME
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[3]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
SCRIPT = Path(__file__).with_name("check_templates.js")
SCREENSHOT = REPO_ROOT / "test-artifacts" / "screenshots" / "template_browser.png"
SHIPPED = sorted(path.stem for path in WORKFLOWS_DIR.glob("*.json"))


@pytest.fixture(scope="module")
def templates_report(browser_ready, comfy_server) -> dict:
    """What the template browser showed (check_templates.js's JSON report)."""
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    command = ["node", str(SCRIPT), comfy_server.url, str(SCREENSHOT), PACK_DIR_NAME]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"check_templates.js failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout)


def test_server_lists_every_shipped_workflow_as_a_template(comfy_server):
    with urllib.request.urlopen(f"{comfy_server.url}/api/workflow_templates", timeout=30) as response:
        listed = json.load(response)
    assert sorted(listed[PACK_DIR_NAME]) == SHIPPED  # UI files only: workflows/api/ is not listed


def test_template_browser_is_this_rows_front_end(templates_report):
    assert templates_report["frontend_version"] == metadata.version("comfyui-frontend-package")
    assert templates_report["categories"]


def test_template_browser_shows_a_card_per_workflow(templates_report):
    assert sorted(templates_report["cards"]) == SHIPPED


def test_every_card_shows_the_workflows_thumbnail(templates_report):
    for name in SHIPPED:
        thumbnail = WORKFLOWS_DIR / f"{name}.jpg"
        with Image.open(thumbnail) as image:
            size = list(image.size)
        fetched = templates_report["thumbnails"].get(name)
        assert fetched == {"status": 200, "type": "image/jpeg", "bytes": thumbnail.stat().st_size}, name
        assert templates_report["images"].get(name) == size, f"{name}: the card shows no decoded picture"
    assert SCREENSHOT.is_file() and SCREENSHOT.stat().st_size > 10_000


@pytest.mark.parametrize("name", SHIPPED)
def test_clicking_a_card_opens_that_workflow(templates_report, name):
    """Every node of the file is on the canvas (on 0.3.64 the FLUX.2 ones too: their missing nodes stay
    as placeholders of the same type, and the missing-nodes dialog names them, test_frontend.py)."""
    shipped = json.loads((WORKFLOWS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    opened = templates_report["opened"][name]
    assert opened["nodes"] == sorted(node["type"] for node in shipped["nodes"])
    assert not opened["template_dialog_open"]
