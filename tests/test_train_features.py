"""Features that scale: float8 cache storage (its measured loss of precision), online features (the MLLM inside
training) against cached ones, and the config rules around them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dla_core.errors import DLAInputError
from dla_core.train.config import config_from_dict
from dla_core.train.data import FP8_STORAGE, load_hidden_states, store_hidden_states


def _roundtrip(hidden: torch.Tensor, storage: str) -> torch.Tensor:
    stored = store_hidden_states(hidden, storage)
    return load_hidden_states(stored["hidden_states"], stored.get("hidden_scale")).float()


def _relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approx.float() - exact.float()).norm() / exact.float().norm())


def test_float8_storage_keeps_outliers_and_costs_about_3_percent_relative_error():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 40, 256, generator=generator)  # [layers, tokens, width]
    hidden[:, :, 7] = 3000.0  # the massive activations of real MLLMs, far beyond e4m3's 448
    stored = store_hidden_states(hidden, FP8_STORAGE)
    assert stored["hidden_states"].dtype == torch.float8_e4m3fn and stored["hidden_scale"].shape == (5, 40, 1)
    fp8 = _roundtrip(hidden, FP8_STORAGE)
    assert torch.allclose(fp8[:, :, 7], hidden[:, :, 7], rtol=0.07)
    small = hidden.clone()
    small[:, :, 7] = 0
    assert _relative_error(_roundtrip(small, FP8_STORAGE), small) < 0.04  # per-token scale: ~2-3 %
    assert _relative_error(_roundtrip(small, "bfloat16"), small) < 0.004  # bfloat16: ~0.2 %


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from dla_train_helpers import tiny_run_config

    from dla_core.train.tiny_setup import build_tiny_training_world

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = build_tiny_training_world(tmp_path_factory.mktemp("features_world"), num_samples=4, seed=0)
    yield root, tiny_run_config(stage1_steps=2, stage2_steps=2)
    torch.set_num_threads(threads)


def _config(world, data=None, **train):
    root, raw = world
    raw = json.loads(json.dumps(raw))
    raw["data"].update(data or {})
    raw["train"].update(train)
    return config_from_dict(raw, base_dir=root)


@pytest.fixture(scope="module")
def caches(world):
    """The same manifest prepared in float32, bfloat16 and float8."""
    from dla_core.train.prepare import prepare_cache

    configs = {}
    for dtype in ("float32", "bfloat16", FP8_STORAGE):
        configs[dtype] = _config(world, {"cache_dtype": dtype, "cache_dir": f"cache-{dtype}"})
        prepare_cache(configs[dtype], rank=0, world_size=1, progress=False)
    return configs


def test_float8_cache_error_on_the_tiny_mllm_features_and_on_the_dla_output(caches, world):
    from dla_core.checkpoint import load_dla
    from dla_core.train.data import CachedFeatureDataset, collate_samples
    from dla_core.train.module import DLAFluxTrainModule

    exact, fp8 = (CachedFeatureDataset(caches[d].data.cache_dir) for d in ("float32", FP8_STORAGE))
    errors = [_relative_error(fp8[i]["hidden_states"], exact[i]["hidden_states"]) for i in range(len(exact))]
    assert max(errors) < 0.04
    dla = load_dla(world[0] / "init_dla.safetensors", dtype=torch.float32)
    torch.manual_seed(0)
    for param in dla.parameters():  # a DLA that does something (the init one starts near identity/zero)
        param.data.normal_(0, 0.05)
    module = DLAFluxTrainModule(dla, torch.nn.Identity(), exact.feature_meta, 3.5, "offset")
    keep = torch.zeros(len(exact), dtype=torch.bool)
    with torch.no_grad():
        out_exact = module.conditioning(collate_samples([exact[i] for i in range(len(exact))]), keep)
        out_fp8 = module.conditioning(collate_samples([fp8[i] for i in range(len(fp8))]), keep)
    assert _relative_error(out_fp8[0], out_exact[0]) < 0.04  # context tokens
    assert _relative_error(out_fp8[2], out_exact[2]) < 0.04  # pooled


def test_float8_cache_shards_are_about_half_the_bfloat16_ones(caches):
    from pathlib import Path

    def hidden_bytes(config):
        from safetensors import safe_open

        total = 0
        for shard in sorted(Path(config.data.cache_dir).glob("shard-*.safetensors")):
            with safe_open(str(shard), framework="pt") as handle:
                for key in handle.keys():
                    if ".hidden_" in key:
                        tensor = handle.get_tensor(key)
                        total += tensor.numel() * tensor.element_size()
        return total

    from dla_core.train.data import CachedFeatureDataset

    width = CachedFeatureDataset(caches["bfloat16"].data.cache_dir).feature_meta["width"]
    bf16, fp8 = hidden_bytes(caches["bfloat16"]), hidden_bytes(caches[FP8_STORAGE])
    # 1 byte per value + one float32 scale per layer and token, against 2 bytes: 0.5006 at width 3584.
    assert fp8 / bf16 == pytest.approx((width + 4) / (2 * width))


@pytest.fixture(scope="module")
def online_run(world, caches):
    from dla_core.train.trainer import train

    config = _config(world, {"features": "online", "cache_dir": None}, output_dir=str(world[0] / "online"))
    return train(config, export=False)


def test_online_features_give_the_losses_of_a_float32_cache(online_run, caches, world):
    from dla_core.train.trainer import train

    raw = caches["float32"].to_dict()
    raw["train"]["output_dir"] = str(world[0] / "cached32")
    cached = train(config_from_dict(raw), export=False)
    assert len(online_run.losses) == 4
    assert np.allclose(cached.losses, online_run.losses, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("storage", "rtol"), [("bfloat16", 2e-2), (FP8_STORAGE, 5e-2)])
def test_cached_features_give_the_online_losses_to_their_storage_precision(online_run, caches, world, storage, rtol):
    from dla_core.train.trainer import train

    raw = caches[storage].to_dict()
    raw["train"]["output_dir"] = str(world[0] / f"cached-{storage}")
    cached = train(config_from_dict(raw), export=False)
    assert np.allclose(cached.losses, online_run.losses, rtol=rtol)


def test_online_features_refuse_dataloader_workers():
    with pytest.raises(DLAInputError, match="set train.num_workers to 0"):
        config_from_dict({"data": {"features": "online"}, "train": {"num_workers": 2}})
    with pytest.raises(DLAInputError, match="data.features 'disk' is not one of"):
        config_from_dict({"data": {"features": "disk"}})
