"""requirements.txt, pyproject.toml and the CI rows agree, and the bounds keep transformers 4.x and 5.x working.

The bad combination this guards against (found with `pip install --dry-run --report`): next to
transformers 4.57 (huggingface-hub < 1.0), `pip install "diffusers>=0.35"` on its own -- the way
ComfyUI-Manager installs requirements.txt, one line at a time -- picks diffusers 0.42.1, which needs
huggingface-hub >= 1.32, upgrades huggingface-hub to 2.x and leaves transformers unimportable. The
tables below are the packages' published metadata (Requires-Dist) for the releases that matter; the
tests check requirements.txt's bounds against them without a network. `.ci/run resolve` checks the same
thing for real in fresh virtual environments.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (CI runs 3.11)

ROOT = Path(__file__).resolve().parents[1]
TORCH_FAMILY = {"torch", "torchvision", "torchaudio"}

# huggingface-hub range each release requires (its Requires-Dist).
TRANSFORMERS_HUB = {
    "4.52.4": ">=0.30.0,<1.0",
    "4.57.6": ">=0.34.0,<1.0",
    "5.0.0": ">=1.3.0,<2.0",
    "5.24.0": ">=1.31.0,<3.0",
}
DIFFUSERS_HUB = {
    "0.35.2": ">=0.34.0",
    "0.36.0": ">=0.34.0,<2.0",
    "0.37.1": ">=0.34.0,<2.0",
    "0.38.0": ">=0.34.0,<2.0",
    "0.39.0": ">=0.34.0,<2.0",
    "0.40.0": ">=1.23.0,<2.0",
    "0.41.0": ">=1.32.0,<2.0",
    "0.42.1": ">=1.32.0,<3.0",
}
HUB_RELEASES = [
    "0.30.0",
    "0.34.0",
    "0.36.2",
    "1.0.0",
    "1.3.0",
    "1.23.0",
    "1.31.0",
    "1.32.0",
    "1.33.0",
    "2.0.0",
    "2.4.0",
]


def requirement_lines(path: Path) -> list[str]:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def requirements(path: Path) -> dict[str, Requirement]:
    parsed = [Requirement(line) for line in requirement_lines(path) if not line.startswith("-")]
    return {canonicalize_name(req.name): req for req in parsed}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def pins(path: Path) -> dict[str, Version]:
    """``name==version`` lines of a .ci/constraints-<row>.txt."""
    found = {}
    for line in requirement_lines(path):
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", line
        found[canonicalize_name(req.name)] = Version(spec.version)
    return found


def allowed(spec: str | SpecifierSet, versions) -> list[str]:
    spec = SpecifierSet(spec) if isinstance(spec, str) else spec
    return [v for v in versions if Version(v) in spec]


@pytest.fixture(scope="module")
def reqs() -> dict[str, Requirement]:
    return requirements(ROOT / "requirements.txt")


def test_no_torch_family_in_requirements_or_pyproject_dependencies(reqs):
    assert TORCH_FAMILY.isdisjoint(reqs)
    dev = {
        canonicalize_name(Requirement(line).name)
        for line in requirement_lines(ROOT / "requirements-dev.txt")
        if not line.startswith("-")
    }
    assert TORCH_FAMILY.isdisjoint(dev)
    project = {canonicalize_name(Requirement(dep).name) for dep in pyproject()["project"]["dependencies"]}
    assert TORCH_FAMILY.isdisjoint(project)


def test_standalone_extra_brings_torch_and_torchvision():
    standalone = pyproject()["project"]["optional-dependencies"]["standalone"]
    extra = {canonicalize_name(Requirement(dep).name) for dep in standalone}
    assert {"torch", "torchvision"} <= extra


def test_pyproject_dependencies_equal_requirements_txt(reqs):
    project = {
        canonicalize_name(Requirement(dep).name): Requirement(dep) for dep in pyproject()["project"]["dependencies"]
    }
    assert {name: str(req.specifier) for name, req in project.items()} == {
        name: str(req.specifier) for name, req in reqs.items()
    }


def test_both_transformers_majors_are_allowed(reqs):
    assert allowed(reqs["transformers"].specifier, ["4.57.6", "5.24.0"]) == ["4.57.6", "5.24.0"]


def test_every_allowed_diffusers_shares_a_huggingface_hub_with_transformers_4_and_5(reqs):
    """Whatever diffusers pip may pick or keep, a huggingface-hub exists that satisfies it AND transformers
    4.57 (for a ComfyUI on 4.x), and one that satisfies it AND transformers 5.x."""
    picked = allowed(reqs["diffusers"].specifier, DIFFUSERS_HUB)
    assert picked, "requirements.txt allows none of the diffusers releases this test knows"
    for diffusers in picked:
        for transformers in ("4.57.6", "5.0.0", "5.24.0"):
            both = SpecifierSet(DIFFUSERS_HUB[diffusers]) & SpecifierSet(TRANSFORMERS_HUB[transformers])
            assert allowed(both, HUB_RELEASES), (
                f"diffusers {diffusers} (hub {DIFFUSERS_HUB[diffusers]}) and transformers {transformers} "
                f"(hub {TRANSFORMERS_HUB[transformers]}) have no huggingface-hub in common"
            )


def test_diffusers_bound_excludes_the_releases_that_break_transformers_4(reqs):
    """The upper bound itself: 0.40+ needs huggingface-hub >= 1.23, which transformers 4.x refuses."""
    spec = reqs["diffusers"].specifier
    assert Version("0.39.0") in spec
    for release in ("0.40.0", "0.41.0", "0.42.1"):
        assert Version(release) not in spec, f"diffusers {release} would break transformers 4.x next to it"


def test_peft_floor_works_with_transformers_5(reqs):
    """peft 0.17 imports transformers.HybridCache (gone in transformers 5); diffusers 0.35 needs peft >= 0.17."""
    spec = reqs["peft"].specifier
    assert Version("0.17.1") not in spec
    assert Version("0.18.0") in spec


def test_dev_requirements_build_on_requirements_txt_and_pin_no_library():
    lines = requirement_lines(ROOT / "requirements-dev.txt")
    assert "-r requirements.txt" in lines
    dev = requirements(ROOT / "requirements-dev.txt")
    assert {"transformers", "diffusers", "peft", "accelerate", "tokenizers"}.isdisjoint(dev)


@pytest.mark.parametrize("row", ["oldest", "current"])
def test_ci_row_pins_lie_inside_the_supported_range(reqs, row):
    row_pins = pins(ROOT / ".ci" / f"constraints-{row}.txt")
    for name in ("transformers", "diffusers", "peft", "accelerate"):
        assert name in row_pins, f"constraints-{row}.txt pins no {name}"
        assert row_pins[name] in reqs[name].specifier, f"row {row}: {name} {row_pins[name]} outside {reqs[name]}"
    assert {"torch", "torchvision"} <= set(row_pins)


def test_ci_rows_cover_both_transformers_majors():
    majors = {row: pins(ROOT / ".ci" / f"constraints-{row}.txt")["transformers"].major for row in ("oldest", "current")}
    assert majors == {"oldest": 4, "current": 5}


def test_requires_comfyui_is_the_oldest_ci_row():
    oldest = re.search(r"\[oldest\]=([0-9][0-9.]*)", (ROOT / ".ci" / "run").read_text(encoding="utf-8")).group(1)
    assert pyproject()["tool"]["comfy"]["requires-comfyui"] == f">={oldest}"
