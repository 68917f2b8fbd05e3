"""Distributed training on CPU processes (gloo): DDP (the default) through torchrun, the FSDP2 sharding of the
accelerate configs' block classes (torch's ``fully_shard``; accelerate itself only shards on GPUs), and the
accelerate configs themselves. DeepSpeed and FSDP2 through accelerate have not been run on GPUs (docs/training.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = REPO / "configs" / "accelerate"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny world, its cache, and a training YAML (batch 1 per process, 2 + 2 steps)."""
    from dla_train_helpers import tiny_run_config

    from dla_core.train.config import config_from_dict
    from dla_core.train.prepare import prepare_cache
    from dla_core.train.tiny_setup import build_tiny_training_world

    root = build_tiny_training_world(tmp_path_factory.mktemp("distributed_world"), num_samples=4, seed=0)
    raw = tiny_run_config(stage1_steps=2, stage2_steps=2, batch_size=1)
    prepare_cache(config_from_dict(raw, base_dir=root), rank=0, world_size=1, progress=False)
    return root, raw


def _yaml(world, name: str, **train) -> Path:
    root, raw = world
    raw = json.loads(json.dumps(raw))
    raw["train"].update(output_dir=name, **train)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(args: list[str], cwd: Path, processes: int = 2) -> str:
    # ACCELERATE_USE_CPU: without it accelerate >= 1.15 sees no distributed run on CPU processes (two single runs).
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests" / "lib")]),
        OMP_NUM_THREADS="1",
        ACCELERATE_USE_CPU="true",
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    done = subprocess.run(command + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _losses(folder: Path) -> list[float]:
    from dla_train_helpers import read_loss_csv

    return [loss for _, _, loss in read_loss_csv(folder / "loss.csv")]


def test_ddp_on_two_cpu_processes_resumes_to_the_uninterrupted_loss_curve_and_exports(world):
    root = world[0]
    out = _run(["-m", "dla_core.train", "--config", str(_yaml(world, "ddp_straight"))], root)
    assert out.count("exported to") == 1  # one main process of a 2-process run, not two single runs
    assert (root / "ddp_straight" / "final" / "lora.safetensors").is_file()
    split = _yaml(world, "ddp_split")
    _run(["-m", "dla_core.train", "--config", str(split), "--stop-at-step", "3"], root)
    _run(["-m", "dla_core.train", "--config", str(split), "--resume", "latest"], root)
    straight = _losses(root / "ddp_straight")
    assert len(straight) == 4 and np.allclose(_losses(root / "ddp_split"), straight, rtol=1e-6, atol=1e-7)


def _fsdp_configs() -> list[str]:
    names = ["fsdp2_flux1_8gpu.yaml"]
    if importlib.util.find_spec("diffusers.models.transformers.transformer_flux2") is not None:
        names.append("fsdp2_flux2_8gpu.yaml")
    return names


@pytest.mark.parametrize("name", _fsdp_configs())
def test_fsdp2_configs_wrap_block_classes_of_the_diffusers_transformer(name):
    config = yaml.safe_load((ACCELERATE / name).read_text())
    assert config["distributed_type"] == "FSDP" and config["fsdp_config"]["fsdp_version"] == 2
    module = "transformer_flux2" if "flux2" in name else "transformer_flux"
    classes = importlib.import_module(f"diffusers.models.transformers.{module}")
    for block in config["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(","):
        assert isinstance(getattr(classes, block, None), type), block


def test_fsdp2_sharding_of_the_configured_blocks_matches_one_process_and_gathers_the_trainables(world, tmp_path):
    """FSDP2 over 2 CPU processes (the same batch on each): the loss, and the trainable weights gathered from the
    shards after a step, equal an unsharded process's."""
    from safetensors.torch import load_file

    config = _yaml(world, "fsdp")
    accelerate_config = str(ACCELERATE / "fsdp2_flux1_8gpu.yaml")
    _run(["-m", "dla_train_fsdp_worker", str(config), accelerate_config, str(tmp_path / "sharded")], world[0])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests" / "lib")]), OMP_NUM_THREADS="1")
    subprocess.run(
        [sys.executable, "-m", "dla_train_fsdp_worker", str(config), accelerate_config, str(tmp_path / "single")],
        cwd=world[0],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    sharded, single = (json.loads((tmp_path / n / "result.json").read_text()) for n in ("sharded", "single"))
    assert sharded["world"] == 2 and all(count >= 1 for count in sharded["sharded"].values())
    assert sharded["loss"] == pytest.approx(single["loss"], rel=1e-6)
    a, b = (load_file(str(tmp_path / n / "trainable.safetensors")) for n in ("sharded", "single"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(".lora_B." in k and b[k].abs().sum() > 0 for k in b)  # the step moved the LoRA


def test_deepspeed_zero2_config_matches_the_training_recipe():
    config = yaml.safe_load((ACCELERATE / "deepspeed_zero2.yaml").read_text())
    paper = yaml.safe_load((REPO / "configs" / "train_paper.yaml").read_text())
    ds = config["deepspeed_config"]
    assert config["distributed_type"] == "DEEPSPEED" and ds["zero_stage"] == 2
    assert ds["gradient_accumulation_steps"] == paper["train"]["gradient_accumulation_steps"]
    assert ds["gradient_clipping"] == paper["train"]["max_grad_norm"]
