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
