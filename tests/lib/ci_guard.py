"""CI helpers shared by the whole suite: never skip silently in CI, find ComfyUI, report versions.

* :func:`skip_or_fail` -- a test prerequisite (ComfyUI, Chromium, node/playwright-core, the front end)
  is missing: skip with the reason on a developer's machine, FAIL with the same reason when the
  environment says ``CI`` (``CI=true``, as GitHub Actions, GitLab and ``.ci/run`` set it), so a CI
  run can never turn green by skipping what it was meant to test.
* :func:`find_comfyui` -- the ComfyUI to test with: ``$COMFYUI_PATH``, else the ComfyUI whose
  ``custom_nodes/`` holds this repository, else ``/opt/ComfyUI``.
* :func:`versions_line` -- ComfyUI version/commit, front end and library versions, printed at the
  end of every pytest session (``pytest_terminal_summary`` below, registered by tests/conftest.py)
  so CI logs show what a run was made with.

Loaded as the top-level module ``ci_guard`` from tests/lib (on ``sys.path`` through tests/conftest.py);
the harness package ``dla_harness`` next to it uses :func:`find_comfyui` and :func:`skip_or_fail`.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Written by .ci/run next to a ComfyUI it unpacked from a source tarball (which has no .git):
# one line "<tarball> <origin repository>@<commit>".
SOURCE_MARKER = ".dla-ci-source"
REPORTED_DISTRIBUTIONS = (
    "torch",
    "torchvision",
    "torchaudio",
    "transformers",
    "diffusers",
    "peft",
    "accelerate",
    "huggingface-hub",
    "tokenizers",
    "comfyui-frontend-package",
)


# ----------------------------------------------------------------------------- never skip silently in CI
def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to a true value (``true``, ``1``, ``yes``)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test with ``reason``; under ``CI=true`` fail it with the same reason instead."""
    if in_ci():
        pytest.fail(
            f"{reason}\n(CI is set: a missing test prerequisite fails the run instead of skipping it; "
            "unset CI to let these tests skip on a machine without it)",
            pytrace=False,
        )
    pytest.skip(reason)


# ----------------------------------------------------------------------------- ComfyUI location
def is_comfyui(path: Path) -> bool:
    """Whether ``path`` is a ComfyUI checkout (main.py, nodes.py and the comfy package)."""
    path = Path(path)
    return (path / "main.py").is_file() and (path / "comfy").is_dir() and (path / "nodes.py").is_file()


def find_comfyui() -> tuple[Path | None, str]:
    """``(path, "")`` of the ComfyUI to test with, or ``(None, reason)`` naming everything tried.

    Order: ``$COMFYUI_PATH``; the ComfyUI this repository sits in (``ComfyUI/custom_nodes/<pack>``);
    ``/opt/ComfyUI``. A ``$COMFYUI_PATH`` that is not a ComfyUI is reported, not silently passed over.
    """
    tried = []
    env = os.environ.get("COMFYUI_PATH")
    if env:
        if is_comfyui(Path(env)):
            return Path(env).resolve(), ""
        tried.append(f"$COMFYUI_PATH={env} (not a ComfyUI checkout: no main.py, nodes.py and comfy/)")
    if REPO_ROOT.parent.name == "custom_nodes" and is_comfyui(REPO_ROOT.parent.parent):
        return REPO_ROOT.parent.parent.resolve(), ""
    tried.append("the ComfyUI this repository is installed in (none: it is not under custom_nodes/)")
    default = Path("/opt/ComfyUI")
    if is_comfyui(default):
        return default.resolve(), ""
    tried.append(str(default))
    return None, (
        "no ComfyUI found; tried " + ", ".join(tried) + ". Set COMFYUI_PATH to a ComfyUI checkout "
        "(git clone --branch v0.3.64 https://github.com/comfyanonymous/ComfyUI), or run .ci/run."
    )


def comfyui_version(path: Path) -> str:
    """``"0.33.0"`` from the checkout's comfyui_version.py (``"unknown"`` when it has none)."""
    try:
        text = (Path(path) / "comfyui_version.py").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    found = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", text)
    return found.group(1) if found else "unknown"


def comfyui_commit(path: Path) -> str:
    """The checkout's git commit (short), else what .ci/run recorded for an unpacked tarball, else "no git"."""
    path = Path(path)
    if (path / ".git").exists():
        try:
            done = subprocess.run(
                ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
            )
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    marker = path / SOURCE_MARKER
    if marker.is_file():
        return marker.read_text(encoding="utf-8").strip()
    return "no git"


# ----------------------------------------------------------------------------- versions
def distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions_line() -> str:
    """One line: ComfyUI (version, commit, path), Python, and the installed versions of the libraries the pack uses."""
    path, _ = find_comfyui()
    if path is None:
        comfy = "ComfyUI: none found"
    else:
        comfy = f"ComfyUI {comfyui_version(path)} ({comfyui_commit(path)}) at {path}"
    libraries = [
        f"{name} {version}" for name in REPORTED_DISTRIBUTIONS if (version := distribution_version(name)) is not None
    ]
    ci = "true" if in_ci() else "unset"
    return f"{comfy}; python {platform.python_version()}; " + ", ".join(libraries) + f"; CI={ci}"


def pytest_terminal_summary(terminalreporter):
    """Session-end line with the versions this session ran with (CI logs keep it next to the summary)."""
    terminalreporter.write_line(f"[dla] tested with: {versions_line()}")
