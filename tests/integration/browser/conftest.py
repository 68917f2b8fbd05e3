"""What every browser test needs: Debian Chromium, node + playwright-core, and ComfyUI's front end package."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import ci_guard  # tests/lib/ci_guard.py
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = Path(os.environ.get("DLA_CHROMIUM", "/usr/bin/chromium"))


def browser_skip_reason() -> str | None:
    """Why the browser tests cannot run here (None when they can); skipped locally, a failure under CI=true."""
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM}: `apt-get install chromium` (Debian) or set DLA_CHROMIUM"
    if shutil.which("node") is None:
        return "no node (Node.js) on PATH to run playwright-core"
    if not (REPO_ROOT / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed: run `npm ci` in the repository root"
    if importlib.util.find_spec("comfyui_frontend_package") is None:
        return (
            "ComfyUI's front end (comfyui-frontend-package) is not installed in this Python: "
            "pip install -r <ComfyUI>/requirements.txt"
        )
    return None


@pytest.fixture(scope="session")
def browser_ready() -> None:
    """Chromium, node + playwright-core and the front end are installed; checked before the server starts."""
    reason = browser_skip_reason()
    if reason:
        ci_guard.skip_or_fail(reason)
