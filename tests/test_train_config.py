"""Training config and manifest validation: bad input fails fast with a message that names the fix.

No model is built here; every check runs on YAML/JSONL text and image headers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dla_core.errors import DLAInputError
from dla_core.train.__main__ import main as train_main
from dla_core.train.config import FLUX_ATTENTION_TARGETS, config_from_dict, load_config
from dla_core.train.data import read_manifest


def _image(path: Path, mode: str = "RGB", size=(24, 20)) -> str:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = np.random.default_rng(0).integers(0, 255, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode).save(path)
    return path.name


def _manifest(tmp_path: Path, lines: list[dict]) -> Path:
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


@pytest.fixture
def good_line(tmp_path):
    return {
        "reference": _image(tmp_path / "ref.png"),
        "prompt": "the toy on a beach",
        "target": _image(tmp_path / "tgt.png"),
    }


def test_defaults_are_the_papers_recipe():
    config = config_from_dict({})
    assert (config.train.stage1_steps, config.train.stage2_steps, config.lora.rank) == (25_000, 10_000, 512)
    assert tuple(config.lora.target_modules) == FLUX_ATTENTION_TARGETS
    assert config.stage_at(24_999) == 1 and config.stage_at(25_000) == 2


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path):
    (tmp_path / "cfg.yaml").write_text(
        yaml.safe_dump({"data": {"manifest": "m.jsonl"}, "train": {"output_dir": "out"}})
    )
    config = load_config(tmp_path / "cfg.yaml")
    assert config.data.manifest == str(tmp_path / "m.jsonl")
    assert config.train.output_dir == str(tmp_path / "out")


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"train": {"stage1_steps": 0}}, ["stage1_steps", "at least 1"]),
        ({"train": {"stage2_steps": 0}}, ["stage2_steps", "at least 1"]),
        ({"lora": {"rank": 0}}, ["lora.rank", "rank >= 1"]),
        ({"train": {"learning_rate": 1e-4}}, ["train.learning_rate", "Allowed keys"]),
        ({"optimizer": {}}, ["Unknown section", "optimizer"]),
        ({"train": {"batch_size": "two"}}, ["train.batch_size", "integer"]),
        ({"train": {"mixed_precision": "fp8"}}, ["mixed_precision", "fp8"]),
        ({"data": {"resolution": 1000}}, ["data.resolution", "multiple of 16"]),
        ({"dropout": {"mllm_off": 0.6, "identity_off": 0.6}}, ["add up to", "> 1"]),
        ({"train": {"reference_method": "sideways"}}, ["reference_method", "sideways"]),
    ],
)
def test_bad_config_values_raise_naming_the_key(raw, words):
    with pytest.raises(DLAInputError) as info:
        config_from_dict(raw)
    for word in words:
        assert word in str(info.value)


def test_missing_config_file_points_to_the_example(tmp_path):
    with pytest.raises(DLAInputError, match="train_tiny.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_valid_manifest_parses_single_and_multiple_references(tmp_path, good_line):
    two = {**good_line, "reference": [good_line["reference"], _image(tmp_path / "ref2.png")]}
    records = read_manifest(_manifest(tmp_path, [good_line, two]))
    assert [len(r.references) for r in records] == [1, 2]
    assert records[1].references[1] == str(tmp_path / "ref2.png")
    assert records[0].prompt == "the toy on a beach"


@pytest.mark.parametrize(
    "change, words",
    [
        ({"target": "missing.png"}, ["line 1", "missing.png", "does not exist"]),
        ({"prompt": "   "}, ["line 1", "empty prompt"]),
        ({"reference": []}, ["line 1", "non-empty list"]),
        ({"caption": "x"}, ["unknown key", "caption"]),
    ],
)
def test_bad_manifest_lines_raise_with_line_number(tmp_path, good_line, change, words):
    with pytest.raises(DLAInputError) as info:
        read_manifest(_manifest(tmp_path, [{**good_line, **change}]))
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_non_rgb_images_are_refused_with_a_conversion_hint(tmp_path, good_line, mode):
    line = {**good_line, "reference": _image(tmp_path / f"ref_{mode}.png", mode=mode)}
    with pytest.raises(DLAInputError, match=rf"mode {mode}.*convert\('RGB'\)"):
        read_manifest(_manifest(tmp_path, [line]))


def test_manifest_line_that_is_not_json_is_named(tmp_path, good_line):
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps(good_line) + "\n{not json\n")
    with pytest.raises(DLAInputError, match="line 2 is not valid JSON"):
        read_manifest(path)


def test_validate_command_checks_config_and_manifest_without_models(tmp_path, good_line, capsys):
    _manifest(tmp_path, [good_line])
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump({"data": {"manifest": "manifest.jsonl"}, "train": {"stage1_steps": 3, "stage2_steps": 2}})
    )
    assert train_main(["validate", "--config", str(cfg)]) == 0
    assert "5 steps" in capsys.readouterr().out
    cfg.write_text(yaml.safe_dump({"train": {"stage2_steps": 0}}))
    assert train_main(["validate", "--config", str(cfg)]) == 2
    assert "stage2_steps" in capsys.readouterr().err


def test_train_refuses_missing_cache_before_loading_models(tmp_path):
    from dla_core.train.trainer import preflight

    flux = tmp_path / "flux"
    flux.mkdir()
    dla = tmp_path / "dla.safetensors"
    dla.write_bytes(b"")
    config = config_from_dict(
        {
            "model": {"flux": str(flux), "init_dla": str(dla)},
            "data": {"cache_dir": str(tmp_path / "cache")},
            "train": {"output_dir": str(tmp_path / "out")},
        }
    )
    with pytest.raises(DLAInputError, match="prepare --config"):
        preflight(config)
