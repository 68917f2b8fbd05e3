"""Aspect-ratio buckets: the bucket list, the assignment, the batch stream, and a bucketed training run."""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice

import numpy as np
import pytest
import torch
from PIL import Image

from dla_core.errors import DLAInputError
from dla_core.train.buckets import (
    LATENT_PATCH,
    BucketBatchSampler,
    assign_bucket,
    assign_buckets,
    bucket_sizes,
    crop_fraction,
)


@pytest.mark.parametrize("resolution", [512, 1024])
def test_buckets_have_patch_multiple_sides_about_the_area_and_both_orientations(resolution):
    buckets = bucket_sizes(resolution, max_aspect=2.0)
    area = resolution**2
    assert (resolution, resolution) in buckets
    for width, height in buckets:
        assert width % LATENT_PATCH == 0 and height % LATENT_PATCH == 0
        assert abs(width * height - area) / area < 0.05
        assert max(width, height) / min(width, height) <= 2.0
        assert (height, width) in buckets
    aspects = [w / h for w, h in buckets]
    assert aspects == sorted(aspects) and aspects[0] == pytest.approx(0.53, abs=0.03)


def test_bucket_list_at_1024_is_the_documented_one():
    """docs/training.md lists these sizes; a change of the rule changes the docs."""
    buckets = bucket_sizes(1024, max_aspect=2.0)
    landscape = [b for b in buckets if b[0] >= b[1]]
    assert landscape == [(1024, 1024), (1088, 960), (1152, 912), (1216, 864), (1280, 816), (1344, 784), (1408, 752)]
    assert len(buckets) == 2 * len(landscape) - 1


def test_a_target_goes_to_the_bucket_nearest_its_aspect():
    buckets = bucket_sizes(64, max_aspect=2.0)
    assert buckets == [(48, 96), (48, 80), (64, 64), (80, 48), (96, 48)]
    assert assign_bucket(60, 60, buckets) == (64, 64)
    assert assign_bucket(100, 50, buckets) == (96, 48)
    assert assign_bucket(50, 84, buckets) == (48, 80)
    assert crop_fraction(100, 50, (96, 48)) == pytest.approx(0.0)


def test_a_target_that_fits_no_bucket_is_refused_naming_the_file_and_the_fix():
    with pytest.raises(
        DLAInputError, match=r"1 target image\(s\) fit no aspect bucket: pano.png \(300x100\).*max_crop"
    ):
        assign_buckets([(60, 60), (300, 100)], 64, names=["sq.png", "pano.png"])
    # Without buckets every target is centre-cropped to the square, whatever its aspect.
    assert assign_buckets([(300, 100)], 64, aspect_buckets=False) == [(64, 64)]


def _buckets_of(n_square, n_wide, n_tall):
    return [(64, 64)] * n_square + [(96, 48)] * n_wide + [(48, 80)] * n_tall


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_bucketed_batches_never_mix_shapes_and_cover_every_sample_once_per_epoch(world, batch_size):
    buckets = _buckets_of(5, 3, 1)
    samplers = [BucketBatchSampler(buckets, batch_size, seed=7, rank=r, world=world) for r in range(world)]
    per_epoch = samplers[0].batches_per_epoch
    streams = [list(islice(iter(s), 3 * per_epoch)) for s in samplers]
    for epoch in range(3):
        seen = Counter()
        for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            global_batch = [i for stream in streams for i in stream[step]]
            assert all(stream[step] for stream in streams)  # every process gets a sample
            assert len({buckets[i] for i in global_batch}) == 1  # one shape per step, on every process
            assert all(len(stream[step]) <= batch_size for stream in streams)
            seen.update(set(global_batch))
        assert set(seen) == set(range(len(buckets)))
        if world == 1:
            assert all(count == 1 for count in seen.values())
    assert streams[0][:per_epoch] != streams[0][per_epoch : 2 * per_epoch]  # epochs are reshuffled


@pytest.mark.parametrize("world", [1, 2])
def test_a_sampler_started_at_a_batch_continues_the_uninterrupted_stream(world):
    buckets = _buckets_of(4, 3, 2)
    for rank in range(world):
        whole = list(islice(iter(BucketBatchSampler(buckets, 2, seed=3, rank=rank, world=world)), 20))
        for start in range(1, 9):  # inside and across epoch boundaries
            resumed = BucketBatchSampler(buckets, 2, seed=3, rank=rank, world=world, start_batch=start)
            assert list(islice(iter(resumed), 20 - start)) == whole[start:], (rank, start)


def test_held_out_samples_never_appear_in_the_stream():
    buckets = _buckets_of(3, 2, 0)
    buckets[1] = None
    stream = list(islice(iter(BucketBatchSampler(buckets, 1, seed=0)), 12))
    assert 1 not in {i for batch in stream for i in batch}


# ----------------------------------------------------------------------------- a bucketed run


@pytest.fixture(scope="module")
def bucket_world(tmp_path_factory):
    """The tiny world with six targets in three aspects (square, 2:1 wide, 3:5 tall) at resolution 64."""
    from dla_train_helpers import tiny_run_config

    from dla_core.train.tiny_setup import build_tiny_training_world

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = build_tiny_training_world(tmp_path_factory.mktemp("bucket_world"), num_samples=2, seed=0)
    rng = np.random.default_rng(1)
    lines = []
    for i, (width, height) in enumerate([(60, 60), (100, 50), (50, 84), (62, 62), (102, 51), (51, 85)]):
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(root / f"bt{i}.png")
        lines.append(json.dumps({"reference": "ref0.png", "prompt": f"subject {i} somewhere", "target": f"bt{i}.png"}))
    (root / "buckets.jsonl").write_text("\n".join(lines) + "\n")
    raw = tiny_run_config(stage1_steps=2, stage2_steps=3)
    raw["data"].update(manifest="buckets.jsonl", cache_dir="bucket_cache", resolution=64)
    yield root, raw
    torch.set_num_threads(threads)


def _config(bucket_world, **train):
    from dla_core.train.config import config_from_dict

    root, raw = bucket_world
    raw = json.loads(json.dumps(raw))
    raw["train"].update(train)
    return config_from_dict(raw, base_dir=root)


@pytest.fixture(scope="module")
def bucket_cache(bucket_world):
    from dla_core.train.prepare import prepare_cache

    config = _config(bucket_world)
    prepare_cache(config, rank=0, world_size=1, progress=False)
    return config


def test_prepare_stores_each_target_at_its_bucket(bucket_cache):
    from dla_core.train.data import CachedFeatureDataset

    dataset = CachedFeatureDataset(bucket_cache.data.cache_dir)
    assert dataset.buckets == [(64, 64), (96, 48), (48, 80)] * 2
    for index, (width, height) in enumerate(dataset.buckets):
        assert tuple(dataset[index]["target"].shape) == (16, height // 8, width // 8)


def test_bucketed_run_resumed_mid_epoch_repeats_the_uninterrupted_loss_curve(bucket_cache, bucket_world):
    from dla_core.train.trainer import train

    root = bucket_world[0]
    straight = train(_config(bucket_world, output_dir=str(root / "straight")), export=False)
    split = _config(bucket_world, output_dir=str(root / "split"))
    first = train(split, stop_at_step=4, export=False)  # 3 batches per epoch: step 4 is inside epoch 2
    second = train(split, resume="latest", export=False)
    assert (first.end_step, second.start_step) == (4, 4)
    assert np.allclose(first.losses + second.losses, straight.losses, rtol=1e-6, atol=1e-7)
    assert all(np.isfinite(straight.losses))


def test_validate_prints_the_buckets_and_refuses_a_target_that_fits_none(tmp_path, capsys):
    import yaml

    from dla_core.train.__main__ import main as train_main

    for name, size in (("ref.png", (40, 40)), ("wide.png", (100, 50)), ("pano.png", (300, 90))):
        Image.new("RGB", size, (90, 40, 10)).save(tmp_path / name)
    line = {"reference": "ref.png", "prompt": "the toy on a table"}
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({**line, "target": "wide.png"}) + "\n" + json.dumps({**line, "target": "ref.png"}))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"manifest": "manifest.jsonl", "resolution": 64}}))
    assert train_main(["validate", "--config", str(cfg)]) == 0
    assert "target buckets: 64x64: 1, 96x48: 1" in capsys.readouterr().out
    manifest.write_text(manifest.read_text() + "\n" + json.dumps({**line, "target": "pano.png"}))
    assert train_main(["validate", "--config", str(cfg)]) == 2
    assert "line 3 target" in capsys.readouterr().err
