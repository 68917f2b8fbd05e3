"""Validation while training: PNG grids of the staged sampler at train.sample_every, a held-out loss with fixed
noise and flow times, held-out samples kept out of the training stream, and no effect on the training curve."""

from __future__ import annotations

import csv
import json
from itertools import islice

import numpy as np
import pytest
import torch
from PIL import Image

from dla_core.errors import DLAInputError
from dla_core.train.config import config_from_dict


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from dla_train_helpers import tiny_run_config

    from dla_core.train.prepare import prepare_cache
    from dla_core.train.tiny_setup import build_tiny_training_world

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = build_tiny_training_world(tmp_path_factory.mktemp("validation_world"), num_samples=4, seed=0)
    raw = tiny_run_config(stage1_steps=2, stage2_steps=2)
    prepare_cache(config_from_dict(raw, base_dir=root), rank=0, world_size=1, progress=False)
    yield root, raw
    torch.set_num_threads(threads)


VALIDATION = {
    "samples": [
        {"reference": "ref0.png", "prompt": "subject 0 on the moon"},
        {"reference": ["ref1.png", "ref_tall.png"], "prompt": "subject 1 in a forest"},
    ],
    "held_out": 1,
    "steps": 2,
    "size": 32,
}


def _config(world, validation=None, **train):
    root, raw = world
    raw = json.loads(json.dumps(raw))
    raw["train"].update(train)
    raw["validation"] = json.loads(json.dumps(validation if validation is not None else VALIDATION))
    return config_from_dict(raw, base_dir=root)


@pytest.fixture(scope="module")
def validated_run(world):
    from dla_core.train.trainer import train

    config = _config(world, output_dir=str(world[0] / "validated"), sample_every=2, tensorboard=True)
    return config, train(config, export=False)


def test_validation_grids_are_written_at_every_sample_every_steps(validated_run):
    from dla_core.train.validation import SAMPLES_DIR

    config, result = validated_run
    folder = result.output_dir / SAMPLES_DIR
    assert sorted(p.name for p in folder.iterdir()) == ["step-0000002.png", "step-0000004.png"]
    with Image.open(folder / "step-0000004.png") as grid:
        assert grid.size == (2 * 32, 2 * 32)  # [reference | generated] x 2 samples
        generated = np.asarray(grid.convert("RGB"))[:, 32:]
    assert generated.std() > 0  # an image was drawn, not a blank cell


def test_held_out_loss_is_logged_with_each_grid_and_in_tensorboard(validated_run):
    from dla_core.train.validation import VALIDATION_CSV

    config, result = validated_run
    rows = list(csv.DictReader((result.output_dir / VALIDATION_CSV).read_text().splitlines()))
    assert [(r["step"], r["stage"], r["grid"]) for r in rows] == [
        ("2", "1", "step-0000002.png"),
        ("4", "2", "step-0000004.png"),
    ]
    assert all(np.isfinite(float(r["heldout_loss"])) for r in rows)
    assert list((result.output_dir / "logs").rglob("events.out.tfevents.*"))


def test_held_out_loss_uses_fixed_noise_and_flow_times(world):
    from dla_core.train.trainer import setup_training

    run = setup_training(_config(world, output_dir=str(world[0] / "heldout"), sample_every=2))
    first = run.validator.heldout_loss(run.module, 2, run.accelerator.autocast)
    assert run.validator.heldout_loss(run.module, 2, run.accelerator.autocast) == first
    assert run.validator.held_out == [3]


def test_held_out_samples_never_enter_the_training_stream(world):
    from dla_core.train.buckets import BucketBatchSampler
    from dla_core.train.data import CachedFeatureDataset
    from dla_core.train.validation import training_buckets

    config = _config(world, validation={"held_out": 2})
    buckets = training_buckets(config, CachedFeatureDataset(config.data.cache_dir))
    stream = list(islice(iter(BucketBatchSampler(buckets, 1, seed=0)), 20))
    assert {i for batch in stream for i in batch} == {0, 1}


def test_validation_does_not_change_the_training_loss_curve(world):
    from dla_core.train.trainer import train

    images_only = {"samples": VALIDATION["samples"][:1], "steps": 1, "size": 32}
    with_validation = train(
        _config(world, images_only, output_dir=str(world[0] / "with"), sample_every=1), export=False
    )
    without = train(_config(world, {}, output_dir=str(world[0] / "without")), export=False)
    assert np.allclose(with_validation.losses, without.losses, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("validation", "words"),
    [
        ({"samples": [{"prompt": "no reference"}]}, r"validation.samples\[0\] must be"),
        ({"samples": [{"reference": "a.png", "prompt": " "}]}, r"validation.samples\[0\] must be"),
        ({"tau1": 0.5, "tau2": 0.8}, "tau2 <= tau1"),
        ({"steps": 0}, "validation.steps"),
    ],
)
def test_bad_validation_settings_are_refused_naming_the_key(validation, words):
    with pytest.raises(DLAInputError, match=words):
        config_from_dict({"validation": validation})


def test_holding_out_every_sample_is_refused(world):
    from dla_core.train.trainer import train

    with pytest.raises(DLAInputError, match="validation.held_out is 4 but the data set has 4 samples"):
        train(_config(world, {"held_out": 4}, output_dir=str(world[0] / "all_out"), sample_every=1), export=False)
