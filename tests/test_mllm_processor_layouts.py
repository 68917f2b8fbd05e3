"""Both on-disk processor layouts load and encode; a folder with no image processor gets a clear error.

transformers 4.x saves a processor's image processor as ``preprocessor_config.json`` (and the
video processor as ``video_preprocessor_config.json``); transformers 5 saves both as entries of
``processor_config.json`` (``ProcessorMixin.to_dict``: ``{"image_processor": {...},
"video_processor": {...}, "processor_class": ..., <processor kwargs>}``) and no separate files.
The tiny builders write whichever layout the installed transformers writes; each test derives
the other one from it, so both layouts are checked on every transformers version.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dla_core.errors import DLAInputError
from dla_core.mllm import encode_joint, load_mllm

PROMPT = "the dog from the picture on a beach"
# processor attribute -> the file transformers 4.x saves it in
SEPARATE_FILES = {"image_processor": "preprocessor_config.json", "video_processor": "video_preprocessor_config.json"}


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def to_transformers5_layout(folder: Path) -> Path:
    """Move the separate processor files into processor_config.json, as transformers 5 saves them."""
    combined = _read(folder / "processor_config.json")
    for attribute, name in SEPARATE_FILES.items():
        path = folder / name
        if path.is_file():
            entry = _read(path)
            processor_class = entry.pop("processor_class", None)  # top level only in the combined file
            combined.setdefault("processor_class", processor_class)
            combined[attribute] = entry
            path.unlink()
    (folder / "processor_config.json").write_text(json.dumps(combined, indent=2, sort_keys=True) + "\n")
    return folder


def to_transformers4_layout(folder: Path) -> Path:
    """Move processor_config.json's image/video processor entries into their own files, as transformers 4.x does."""
    combined = _read(folder / "processor_config.json")
    for attribute, name in SEPARATE_FILES.items():
        entry = combined.pop(attribute, None)
        if entry is not None:
            entry["processor_class"] = combined["processor_class"]
            (folder / name).write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n")
    (folder / "processor_config.json").write_text(json.dumps(combined, indent=2, sort_keys=True) + "\n")
    return folder


def remove_image_processor(folder: Path) -> Path:
    """Drop the image processor from both layouts (the tokenizer, chat template and video processor stay)."""
    (folder / "preprocessor_config.json").unlink(missing_ok=True)
    combined = _read(folder / "processor_config.json")
    if "image_processor" in combined:
        del combined["image_processor"]
        (folder / "processor_config.json").write_text(json.dumps(combined, indent=2, sort_keys=True) + "\n")
    return folder


LAYOUTS = {"transformers4": to_transformers4_layout, "transformers5": to_transformers5_layout}


@pytest.fixture(params=["internvl", "qwen2_5_vl", "qwen3_vl"])
def family_dir(request):
    fixture = {"internvl": "tiny_internvl_dir", "qwen2_5_vl": "tiny_qwen25vl_dir", "qwen3_vl": "tiny_qwen3vl_dir"}
    return request.getfixturevalue(fixture[request.param])


def _copy(source: Path, target: Path, layout: str) -> Path:
    shutil.copytree(source, target)
    return LAYOUTS[layout](target)


def test_layout_helpers_write_what_each_version_writes(family_dir, tmp_path):
    old = _copy(family_dir, tmp_path / "old", "transformers4")
    new = _copy(family_dir, tmp_path / "new", "transformers5")
    assert (old / "preprocessor_config.json").is_file() and (old / "video_preprocessor_config.json").is_file()
    assert "image_processor" not in _read(old / "processor_config.json")
    assert "image_processor_type" in _read(old / "preprocessor_config.json")
    assert not (new / "preprocessor_config.json").exists() and not (new / "video_preprocessor_config.json").exists()
    combined = _read(new / "processor_config.json")
    assert (
        "image_processor_type" in combined["image_processor"] and "processor_class" not in combined["image_processor"]
    )
    assert combined["processor_class"].endswith("Processor") and "video_processor" in combined
    # the two layouts hold the same settings
    image_old = {k: v for k, v in _read(old / "preprocessor_config.json").items() if k != "processor_class"}
    assert image_old == combined["image_processor"]


def test_both_layouts_load_and_encode_identically(family_dir, tmp_path, make_reference):
    references = [make_reference(), make_reference(44, 60, seed=1)]
    results = {}
    for layout in LAYOUTS:
        folder = _copy(family_dir, tmp_path / layout, layout)
        mllm = load_mllm(folder, dtype="fp32")
        features = encode_joint(mllm, PROMPT, references)
        assert features.extra["image_token_counts"][0] > 0
        assert bool(features.text_mask.any()) and torch.isfinite(features.hidden_states).all()
        results[layout] = (mllm.processor.image_processor.to_dict(), features)
    (config4, features4), (config5, features5) = results.values()
    for key in ("size", "image_mean", "image_std", "patch_size", "merge_size", "max_patches"):
        assert config4.get(key) == config5.get(key), key
    assert torch.equal(features4.hidden_states, features5.hidden_states)
    assert torch.equal(features4.image_mask, features5.image_mask) and torch.equal(
        features4.text_mask, features5.text_mask
    )


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_folder_with_neither_layout_names_the_missing_image_processor(family_dir, tmp_path, layout):
    folder = remove_image_processor(_copy(family_dir, tmp_path / "broken", layout))
    with pytest.raises(
        DLAInputError, match=r"no image processor \(preprocessor_config\.json\).*\"image_processor\" entry"
    ):
        load_mllm(folder)
