"""The front end's node help panel shows the pack's own page (web/docs/<node id>.md) for a pack node.

check_node_help.js opens it as a person does (select the node, the selection toolbox's info button) in
headless Chromium against the real comfyui-frontend-package of the row: 1.27.10 (ComfyUI 0.3.64) shows it
in the node library sidebar, 1.49.6 (ComfyUI 0.33.0) in the right-hand panel's Info tab. Both fetch
/extensions/<pack folder>/docs/<node id>/<locale>.md first, then /extensions/<pack folder>/docs/<node id>.md.
"""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from dla_harness.tree import PACK_DIR_NAME

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).with_name("check_node_help.js")
SCREENSHOT = REPO_ROOT / "test-artifacts" / "screenshots" / "node_help_DLAStagedKSampler.png"
NODE_ID = "DLAStagedKSampler"
PAGE = REPO_ROOT / "web" / "docs" / f"{NODE_ID}.md"


@pytest.fixture(scope="module")
def help_report(browser_ready, comfy_server) -> dict:
    """What the help panel showed for the Staged KSampler (check_node_help.js's JSON report)."""
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    expected = "stage 2: MLLM + identity"  # a line of the page's stage picture, nowhere in the node's schema
    assert expected in PAGE.read_text(encoding="utf-8")
    command = ["node", str(SCRIPT), comfy_server.url, str(SCREENSHOT), NODE_ID, expected]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"check_node_help.js failed:\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout)
    report["expected"] = expected
    return report


def test_help_panel_is_this_rows_front_end(help_report):
    assert help_report["frontend_version"] == metadata.version("comfyui-frontend-package")
    assert help_report["info_buttons"] == 1


def test_help_panel_fetches_the_packs_page(help_report):
    assert f"200 /extensions/{PACK_DIR_NAME}/docs/{NODE_ID}.md" in help_report["requests"]


def test_help_panel_shows_the_page_text(help_report):
    assert help_report["shown"], help_report["panel_text"][:2000]
    shown = help_report["panel_text"]
    assert help_report["expected"] in shown
    assert "Typical wiring" in shown and "in plain words" in shown  # the whole page, not the node's description
    assert SCREENSHOT.is_file() and SCREENSHOT.stat().st_size > 10_000
