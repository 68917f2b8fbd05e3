"""pyproject.toml is ready for the Comfy Registry (ComfyUI-Manager's install route), read by the registry's own parser.

comfy-cli's ``extract_node_configuration`` is what ``comfy node publish`` (and so the publish workflow,
``.github/workflows/publish.yml``) reads the file with. It warns and drops a field it cannot use; the rules
it leaves to the registry's server are checked here from the registry's specification
(https://docs.comfy.org/registry/specifications): the node id, semver, the license file, the repository URL,
the publisher id, the icon (a URL: PNG/SVG/JPG/GIF, at most 800x400) and ``requires-comfyui``.
A modified copy of the file shows that each rule fails when broken.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
NODE_ID = re.compile(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?![-_.]))*")  # no leading digit/special, no two specials in a row
SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")  # X.Y.Z, three numbers
ICON_FORMATS = {"PNG", "JPEG", "GIF"}
ICON_MAX = (800, 400)
RAW_PREFIX = "https://raw.githubusercontent.com/{owner}/{repo}/main/"


def registry_problems(pyproject: Path, capsys) -> list[str]:
    """What the registry would refuse or drop in ``pyproject`` (files it names are looked up next to it)."""
    from comfy_cli.registry import extract_node_configuration

    capsys.readouterr()
    config = extract_node_configuration(str(pyproject))
    printed = capsys.readouterr()
    problems = [
        f"comfy-cli: {line.strip()}" for line in (printed.out + printed.err).splitlines() if "warning" in line.lower()
    ]
    if config is None:
        return problems + ["comfy-cli could not read the file"]
    project, comfy = config.project, config.tool_comfy
    folder = pyproject.parent

    name = project.name
    if not (name and len(name) < 100 and NODE_ID.fullmatch(name)):
        problems.append(
            f"node id {name!r}: letters, digits, '-', '_', '.', no two specials in a row, starts with a letter"
        )
    if "comfyui" in name.lower():
        problems.append(f"node id {name!r} contains 'ComfyUI' (against the registry's best practice)")
    if not SEMVER.fullmatch(project.version):
        problems.append(f"version {project.version!r} is not semver X.Y.Z")
    if not (project.license.file and (folder / project.license.file).is_file()):
        problems.append(f"license must be {{file = ...}} naming a file here, got {project.license}")
    if not project.description.strip():
        problems.append("no description")

    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?", project.urls.repository)
    if not match:
        problems.append(f"[project.urls] Repository {project.urls.repository!r} is not a GitHub repository URL")
    if not comfy.publisher_id or "todo" in comfy.publisher_id.lower():
        problems.append("[tool.comfy] PublisherId is empty")
    problems += _icon_problems(comfy.icon, match, folder)
    if not project.supported_comfyui_version:
        problems.append("[tool.comfy] requires-comfyui is missing or was dropped")
    return problems


def _icon_problems(icon: str, repository, folder: Path) -> list[str]:
    if not icon:
        return ["[tool.comfy] Icon is empty"]
    if not repository:
        return []  # reported with the repository
    prefix = RAW_PREFIX.format(owner=repository.group(1), repo=repository.group(2))
    if not icon.startswith(prefix):
        return [f"Icon {icon!r} is not a file of this repository ({prefix}...)"]
    path = folder / icon[len(prefix) :]
    if not path.is_file():
        return [f"Icon {icon!r}: {path.relative_to(folder)} is not in the repository"]
    if path.suffix.lower() == ".svg":
        return []
    from PIL import Image

    with Image.open(path) as image:
        if image.format not in ICON_FORMATS:
            return [f"Icon format {image.format} is not PNG, JPG, GIF or SVG"]
        if image.width > ICON_MAX[0] or image.height > ICON_MAX[1]:
            return [f"Icon is {image.width}x{image.height}, larger than {ICON_MAX[0]}x{ICON_MAX[1]}"]
    return []


def test_pyproject_passes_the_registry_parser_and_specification(capsys):
    assert registry_problems(PYPROJECT, capsys) == []


def test_registry_parser_reads_the_values_the_registry_will_show(capsys):
    from comfy_cli.registry import extract_node_configuration

    config = extract_node_configuration(str(PYPROJECT))
    assert config.project.name == "dla-subject"
    assert config.tool_comfy.publisher_id == "dla-subject"
    assert config.project.supported_comfyui_version == ">=0.3.64"
    assert config.project.license.file == "LICENSE"
    assert "torch" not in {re.split(r"[<>=!~ ;\[]", dep)[0] for dep in config.project.dependencies}
    assert config.tool_comfy.icon.endswith("/docs/images/icon.png")


def _copy_with(tmp_path: Path, old: str, new: str) -> Path:
    text = PYPROJECT.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} must occur once in pyproject.toml"
    (tmp_path / "docs" / "images").mkdir(parents=True)
    shutil.copy(ROOT / "LICENSE", tmp_path / "LICENSE")
    shutil.copy(ROOT / "docs" / "images" / "icon.png", tmp_path / "docs" / "images" / "icon.png")
    copy = tmp_path / "pyproject.toml"
    copy.write_text(text.replace(old, new), encoding="utf-8")
    return copy


@pytest.mark.parametrize(
    "old, new, message",
    [
        ('name = "dla-subject"', 'name = "123-subject"', "node id '123-subject'"),
        ('name = "dla-subject"', 'name = "dla--subject"', "node id 'dla--subject'"),
        ('name = "dla-subject"', 'name = "dla subject"', "node id 'dla subject'"),
        ('name = "dla-subject"', 'name = "ComfyUI-dla-subject"', "contains 'ComfyUI'"),
        ('version = "0.1.0"', 'version = "0.1"', "not semver"),
        ('version = "0.1.0"', 'version = "v0.1.0"', "not semver"),
        ('version = "0.1.0"', 'version = ""', "not semver"),
        ('license = { file = "LICENSE" }', 'license = "GPL-3.0"', "license must be {file"),
        ('license = { file = "LICENSE" }', 'license = { file = "LICENSE.txt" }', "license must be {file"),
        ('PublisherId = "dla-subject"', 'PublisherId = ""', "PublisherId is empty"),
        ('requires-comfyui = ">=0.3.64"', 'requires-comfyui = ">=0.3"', "requires-comfyui"),
        ("/main/docs/images/icon.png", "/main/docs/images/missing.png", "is not in the repository"),
        ('Repository = "https://github.com/', 'Homepage = "https://github.com/', "Repository ''"),
    ],
)
def test_a_broken_pyproject_fails_the_check(tmp_path, capsys, old, new, message):
    problems = registry_problems(_copy_with(tmp_path, old, new), capsys)
    assert any(message in problem for problem in problems), problems


def test_icon_larger_than_the_registry_allows_fails(tmp_path, capsys):
    from PIL import Image

    copy = _copy_with(tmp_path, 'version = "0.1.0"', 'version = "0.1.0"')
    Image.new("RGB", (801, 100)).save(tmp_path / "docs" / "images" / "icon.png")
    assert any("larger than 800x400" in problem for problem in registry_problems(copy, capsys))


def test_publish_workflow_is_the_registry_standard_one():
    workflow = (ROOT / ".github" / "workflows" / "publish.yml").read_text(encoding="utf-8")
    assert "uses: Comfy-Org/publish-node-action@" in workflow
    assert "personal_access_token: ${{ secrets.REGISTRY_ACCESS_TOKEN }}" in workflow
    assert re.search(r"push:\s*\n\s*branches:\s*\n\s*- main\s*\n\s*paths:\s*\n\s*- \"pyproject.toml\"", workflow)


def test_no_exec_or_eval_for_the_publish_actions_security_lint():
    """publish-node-action runs ruff S102/S307 (exec/eval) and opens an issue on any finding."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", ".", "--select=S102,S307", "--target-version=py310", "--exit-zero"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("", "All checks passed!"), result.stdout
