"""``python -m dla_core generate``: the embedded self-test end to end, and clean errors on bad input."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dla_core.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "dla_selftest"  # shared with tests/test_pipeline.py


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generate_refs")
    rng = np.random.default_rng(0)
    paths = {}
    for name, shape in (("rgb", (40, 56, 3)), ("rgb2", (48, 32, 3)), ("rgba", (40, 56, 4)), ("gray", (40, 56))):
        paths[name] = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[name])
    return paths


def generate(*args):
    return main(["generate", *map(str, args)])


def test_embedded_default_writes_a_png_and_says_weights_are_random(images, cache_dir, tmp_path, capsys):
    out = tmp_path / "out.png"
    code = generate(
        "--reference",
        images["rgb"],
        "--reference",
        images["rgb2"],
        "--prompt",
        "the robot in a forest",
        "--out",
        out,
        "--steps",
        3,
        "--width",
        48,
        "--height",
        32,
        "--cache-dir",
        cache_dir,
        "--no-progress",
    )
    assert code == 0
    with Image.open(out) as image:
        assert image.size == (48, 32) and image.mode == "RGB"
        assert np.asarray(image).std() > 0  # not a blank image
    printed = capsys.readouterr().out
    assert "RANDOM weights" in printed
    assert "schedule: step" in printed


def test_embedded_cache_is_keyed_by_the_transformers_major_version(cache_dir):
    """A tiny MLLM saved by transformers 5 does not load in 4.x: environments sharing a cache must not share it."""
    import json

    import transformers

    from dla_core.generate import EMBEDDED_VERSION, build_embedded_models

    major = transformers.__version__.split(".")[0]
    paths = build_embedded_models(cache_dir)
    folder = paths["mllm"].parent
    assert folder.name == f"selftest-v{EMBEDDED_VERSION}-transformers{major}-seed0"
    assert (folder / "complete").is_file()
    saved_by = json.loads((paths["mllm"] / "config.json").read_text())["transformers_version"]
    assert saved_by.split(".")[0] == major


def test_two_images_get_numbered_files(images, cache_dir, tmp_path):
    code = generate(
        "--reference",
        images["rgb"],
        "--prompt",
        "the robot",
        "--out",
        tmp_path / "out.png",
        "--steps",
        1,
        "--width",
        32,
        "--height",
        32,
        "--num-images",
        2,
        "--cache-dir",
        cache_dir,
        "--no-progress",
    )
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out_0.png", "out_1.png"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--reference": "missing.png"}, "Reference image not found"),
        ({"--prompt": "  "}, "prompt is empty"),
        ({"--reference": "RGBA"}, "alpha channel"),
        ({"--reference": "GRAY"}, "grayscale"),
        ({"--tau1": 0.5, "--tau2": 0.9}, "tau2 no larger than tau1"),
        ({"--steps": 0}, "steps must be at least 1"),
        ({"--width": 50}, "multiple of 16"),
        (
            {"--flux": "nowhere", "--vae": "nowhere", "--mllm": "nowhere", "--dla": "nowhere"},
            "--flux 'nowhere' does not exist",
        ),
        ({"--flux": "nowhere"}, "missing --vae, --mllm, --dla"),
        ({"--out": "out.gif"}, "must end in one of"),
    ],
)
def test_bad_input_is_one_error_line_exit_2_before_any_model_is_built(images, tmp_path, capsys, change, message):
    args = {"--reference": images["rgb"], "--prompt": "the robot", "--out": tmp_path / "out.png"}
    args.update(change)
    if args["--reference"] == "RGBA":
        args["--reference"] = images["rgba"]
    elif args["--reference"] == "GRAY":
        args["--reference"] = images["gray"]
    elif args["--reference"] == "missing.png":
        args["--reference"] = tmp_path / "missing.png"
    fresh_cache = tmp_path / "cache"
    flat = [str(item) for pair in args.items() for item in pair]
    code = generate(*flat, "--cache-dir", fresh_cache)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not fresh_cache.exists()  # nothing was built


def test_command_line_exit_code_is_2_on_bad_input(images, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dla_core",
            "generate",
            "--reference",
            str(tmp_path / "none.png"),
            "--prompt",
            "x",
            "--out",
            str(tmp_path / "o.png"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: Reference image not found")


def test_self_test_without_reference_or_prompt_uses_the_bundled_ones(cache_dir, tmp_path, capsys):
    from dla_core.generate import BUNDLED_PROMPT, bundled_reference_path

    out = tmp_path / "out.png"
    code = generate(
        "--out", out, "--steps", 2, "--width", 32, "--height", 32, "--cache-dir", cache_dir, "--no-progress"
    )
    assert code == 0
    with Image.open(out) as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    printed = capsys.readouterr().out
    assert f"self-test input: reference {bundled_reference_path()}, prompt '{BUNDLED_PROMPT}'" in printed
    assert "RANDOM weights" in printed


def test_bundled_reference_is_a_small_rgb_image_inside_the_package():
    from dla_core.generate import bundled_reference_path

    path = bundled_reference_path()
    assert path.parent.parent == REPO / "dla_core"
    with Image.open(path) as image:
        assert image.mode == "RGB" and max(image.size) <= 128


def test_bundled_reference_is_package_data_of_the_install():
    """`pip install .` ships only what pyproject.toml names: the asset must be matched by its package-data."""
    import fnmatch

    from dla_core.generate import BUNDLED_REFERENCE

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (CI runs 3.11)

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert "dla_core" in setuptools["packages"]["find"]["include"]
    assert any(fnmatch.fnmatch(BUNDLED_REFERENCE, pattern) for pattern in setuptools["package-data"]["dla_core"])
    assert "nodes" not in setuptools["packages"]["find"]["include"]  # the nodes stay in the clone


def test_model_flags_without_reference_is_an_input_error(tmp_path, capsys):
    for name in ("flux", "vae", "mllm"):
        (tmp_path / name).mkdir()
    (tmp_path / "mllm" / "config.json").write_text("{}")
    (tmp_path / "dla.safetensors").write_bytes(b"")
    models = [f"--{name}" if i % 2 == 0 else tmp_path / name for name in ("flux", "vae", "mllm") for i in range(2)]
    code = generate(*models, "--dla", tmp_path / "dla.safetensors", "--prompt", "x", "--out", tmp_path / "o.png")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (
        "error: With the model flags, give --reference: the bundled reference and prompt are for the self-test only."
    )


def test_readme_standalone_block_is_two_commands_the_cli_accepts():
    """`.ci/run standalone` runs README's <!-- ci:standalone --> block line by line; its generate line must parse."""
    import shlex

    from dla_core.cli import build_parser

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- ci:standalone -->", 1)[1].split("```", 2)[1]
    commands = [line.split(" #", 1)[0].strip() for line in block.splitlines()[1:] if line.strip()]
    assert commands == ['pip install ".[standalone]"', "python -m dla_core generate --out out.png"]
    args = build_parser("generate").parse_args(shlex.split(commands[1])[3:])
    assert args.reference is None and args.prompt is None and args.out == "out.png"
