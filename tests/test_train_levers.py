"""Memory levers (8-bit optimizer, quantized base, gradient checkpointing) and the estimate `validate` prints.

bitsandbytes and torchao are optional and not installed in CI: their configuration, their error messages and
the state-size accounting are tested here; a run with the 8-bit optimizer uses a stand-in module with
bitsandbytes' interface (the plumbing, not bitsandbytes' kernels, which have no CPU backend).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dla_core.errors import DLAInputError
from dla_core.train.config import config_from_dict, load_config
from dla_core.train.estimate import (
    DIT_PRESETS,
    MLLM_PRESETS,
    GiB,
    estimate,
    estimate_for_config,
    optimizer_state_bytes,
    preset_dla_config,
)

PAPER = Path(__file__).resolve().parents[1] / "configs" / "train_paper.yaml"


def test_optimizer_state_rule_8_bytes_for_adamw_2_for_8bit_and_32bit_below_4096_values():
    assert optimizer_state_bytes([10_000, 100], "adamw") == 8 * 10_100
    assert optimizer_state_bytes([10_240, 100], "adamw8bit") == 2 * 10_240 + 8 * 40 + 8 * 100
    with pytest.raises(DLAInputError, match="train.optimizer 'sgd'"):
        optimizer_state_bytes([1], "sgd")


def _paper(**changes):
    raw = yaml.safe_load(PAPER.read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    return config_from_dict(raw, base_dir=PAPER.parent)


def _paper_estimate(**changes):
    mllm = MLLM_PRESETS["internvl3-8b"]
    return estimate(_paper(**changes), DIT_PRESETS["flux1-dev"], mllm, preset_dla_config(mllm, "flux1-dev"), 200_000)


def test_paper_recipe_sizes_match_the_issue():
    """Rank-512 LoRA on FLUX.1-dev ~0.84 B parameters; ~60 MB of InternVL3-8B features per sample, ~12 TB for 200k."""
    est = _paper_estimate()
    assert est.lora_params == 266 * 512 * (3072 + 3072)  # 8 x 19 double-block + 3 x 38 single-block projections
    assert 0.12e9 < est.dla_params < 0.14e9
    assert 55e6 < est.cache_bytes_per_sample < 70e6 and 11e12 < est.cache_bytes < 14e12
    assert est.parts["optimizer state"] == 8 * est.trainable_params
    assert 30 * GiB < est.per_gpu_bytes < 60 * GiB


def test_each_lever_moves_its_own_part_of_the_estimate():
    base = _paper_estimate()
    fp8 = _paper_estimate(data__cache_dtype="float8_e4m3fn")
    assert fp8.cache_bytes / base.cache_bytes == pytest.approx(0.5, abs=0.02)
    online = _paper_estimate(data__features="online", train__num_workers=0)
    assert online.cache_bytes == 0 and online.parts["frozen MLLM (online)"] == 2 * MLLM_PRESETS["internvl3-8b"].params
    eight_bit = _paper_estimate(train__optimizer="adamw8bit")
    assert eight_bit.parts["optimizer state"] / base.parts["optimizer state"] == pytest.approx(0.25, abs=0.01)
    no_checkpointing = _paper_estimate(train__gradient_checkpointing=False)
    assert no_checkpointing.parts["activations"] > 5 * base.parts["activations"]
    int8 = _paper_estimate(model__quantize_base="int8")
    assert int8.parts["frozen DiT"] / base.parts["frozen DiT"] == pytest.approx(0.5, abs=0.01)
    batch4 = _paper_estimate(train__batch_size=4)
    assert batch4.parts["activations"] == pytest.approx(4 * base.parts["activations"])
    assert base.sharded_bytes(8, "fsdp2") < base.sharded_bytes(8, "zero2") < base.per_gpu_bytes


def test_validate_prints_the_cache_and_memory_estimate_of_the_papers_recipe(capsys):
    from dla_core.train.__main__ import main as train_main

    argv = ["validate", "--config", str(PAPER), "--samples", "200000", "--dit", "flux1-dev"]
    assert train_main(argv) == 0
    out = capsys.readouterr().out
    assert "FLUX.1-dev (11.8B) + InternVL3-8B (7.9B, 29 of 29 layers x 3584)" in out
    assert "feature cache: 12.7 TB for 200000 samples" in out
    assert "memory per GPU at batch 1 (DDP): 42.7 GiB" in out and "FSDP2" in out
    assert train_main(["validate", "--config", str(PAPER), "--samples", "10", "--dit", "flux2-klein-4b"]) == 0
    assert "FLUX.2 [klein] 4B (3.8B) + Qwen3-VL-4B" in capsys.readouterr().out
    assert train_main(["validate", "--config", str(PAPER), "--samples", "10", "--dit", "sd3"]) == 2
    assert "--dit 'sd3' is not one of flux1-dev" in capsys.readouterr().err


# ----------------------------------------------------------------------------- on the tiny world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from dla_train_helpers import tiny_run_config

    from dla_core.train.prepare import prepare_cache
    from dla_core.train.tiny_setup import build_tiny_training_world

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = build_tiny_training_world(tmp_path_factory.mktemp("levers_world"), num_samples=4, seed=0)
    raw = tiny_run_config(stage1_steps=2, stage2_steps=1)
    prepare_cache(config_from_dict(raw, base_dir=root), rank=0, world_size=1, progress=False)
    yield root, raw
    torch.set_num_threads(threads)


def _config(world, model=None, **train):
    root, raw = world
    raw = json.loads(json.dumps(raw))
    raw["model"].update(model or {})
    raw["train"].update(train)
    return config_from_dict(raw, base_dir=root)


@pytest.fixture(scope="module")
def plain_run(world):
    from dla_core.train.trainer import train

    return train(_config(world, output_dir=str(world[0] / "plain")), export=False)


def test_the_estimate_from_the_tiny_folders_counts_the_trainables_the_trainer_reports(world, plain_run):
    from dla_core.train.data import read_manifest

    config = _config(world)
    est = estimate_for_config(config, read_manifest(config.data.manifest))
    assert est.trainable_params == plain_run.trainable_params > 0
    assert plain_run.optimizer_state_bytes == 8 * plain_run.trainable_params
    assert est.parts["optimizer state"] == optimizer_state_bytes([est.lora_params, est.dla_params], "adamw")


def test_the_analytic_lora_rule_matches_the_tiny_flux_weights(world):
    from dla_core.train.estimate import dit_shape_from_folder, lora_params_from_shapes

    config = _config(world)
    dit, shapes = dit_shape_from_folder(config.model.flux)
    exact = lora_params_from_shapes(shapes, config.lora.target_modules, config.lora.rank)
    analytic = sum(config.lora.rank * (i + o) for i, o in dit.lora_shapes(config.lora.target_modules))
    assert exact == analytic > 0


def test_gradient_checkpointing_on_gives_the_same_run(world, plain_run):
    from dla_core.train.trainer import train

    checkpointed = train(_config(world, output_dir=str(world[0] / "gc"), gradient_checkpointing=True), export=False)
    assert np.allclose(checkpointed.losses, plain_run.losses, rtol=1e-5, atol=1e-7)


def test_adamw8bit_without_bitsandbytes_is_refused_before_the_model_loads(world, monkeypatch):
    from dla_core.train import trainer

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    monkeypatch.setattr(trainer, "build_module", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(DLAInputError, match=r"adamw8bit needs the Python package 'bitsandbytes'.*pip install"):
        trainer.train(_config(world, output_dir=str(world[0] / "no_bnb"), optimizer="adamw8bit"), export=False)


def _fake_bitsandbytes(adamw8bit) -> types.ModuleType:
    module = types.ModuleType("bitsandbytes")
    module.__version__ = "0.0-test"
    module.optim = types.SimpleNamespace(AdamW8bit=adamw8bit)
    return module


def test_adamw8bit_without_a_backend_for_the_device_says_what_to_do(world, monkeypatch):
    from dla_core.train.trainer import train

    class NoBackend(torch.optim.AdamW):
        def step(self, closure=None):
            raise NotImplementedError("no 8-bit kernels for cpu")

    monkeypatch.setitem(sys.modules, "bitsandbytes", _fake_bitsandbytes(NoBackend))
    with pytest.raises(DLAInputError, match=r"no 8-bit AdamW for device 'cpu'.*set train.optimizer: adamw"):
        train(_config(world, output_dir=str(world[0] / "no_backend"), optimizer="adamw8bit"), export=False)


def test_adamw8bit_lever_gives_a_valid_run_and_reports_its_state_size(world, monkeypatch, plain_run):
    from dla_core.train.trainer import train

    monkeypatch.setitem(sys.modules, "bitsandbytes", _fake_bitsandbytes(torch.optim.AdamW))  # the interface only
    run = train(_config(world, output_dir=str(world[0] / "8bit"), optimizer="adamw8bit"), export=False)
    assert np.allclose(run.losses, plain_run.losses, rtol=1e-5, atol=1e-7)  # the stand-in is plain AdamW
    assert run.trainable_params == plain_run.trainable_params
    assert run.optimizer_state_bytes < 0.5 * plain_run.optimizer_state_bytes


def test_int8_base_without_torchao_is_refused_before_the_model_loads(world, monkeypatch):
    from dla_core.train.trainer import train

    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(DLAInputError, match=r"quantize_base: int8 needs the Python package 'torchao'"):
        train(_config(world, {"quantize_base": "int8"}, output_dir=str(world[0] / "no_torchao")), export=False)


def test_unknown_lever_values_are_refused_naming_the_key():
    with pytest.raises(DLAInputError, match="train.optimizer 'lion' is not one of"):
        config_from_dict({"train": {"optimizer": "lion"}})
    with pytest.raises(DLAInputError, match="model.quantize_base 'nf4' is not one of"):
        config_from_dict({"model": {"quantize_base": "nf4"}})


def test_example_paper_config_still_loads():
    assert load_config(PAPER).train.optimizer == "adamw"
