"""Crash-safe training checkpoints: a run killed at any moment of writing one resumes from the last complete one.

A real SIGKILL: a child process trains with the trainer's own code and kills itself right after the
first file of a checkpoint is on disk (the DLA + LoRA weights written, accelerate's optimizer,
scheduler and RNG states not yet), the moment an older trainer left a ``step-*`` folder that
``--resume latest`` then failed on with a raw ``FileNotFoundError``. The resumed run must end with the
loss curve and the exported weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dla_core.errors import DLAInputError
from dla_core.train.config import config_from_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = dict(stage1_steps=3, stage2_steps=3, checkpoint_every=2)  # checkpoints at steps 2, 3 (end of stage 1), 4, 6
KILL_AT = 4

# Trains with the trainer's own code; dies by SIGKILL once the checkpoint of step KILL_AT has its first file.
CHILD = r"""
import json, os, signal, sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])
import torch

torch.set_num_threads(1)
import dla_core.train.trainer as trainer
from dla_core.train.config import config_from_dict

raw, base, kill_at = json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3]), int(sys.argv[4])
write = trainer.save_file


def write_then_die(state, path, *args, **kwargs):
    write(state, path, *args, **kwargs)
    if Path(path).parent.name.endswith(f"step-{kill_at:07d}"):
        os.kill(os.getpid(), signal.SIGKILL)


trainer.save_file = write_then_die
trainer.train(config_from_dict(raw, base_dir=base))
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny training world with its feature cache prepared; one thread (the child trains with one too)."""
    from dla_train_helpers import tiny_run_config

    from dla_core.train.prepare import prepare_cache
    from dla_core.train.tiny_setup import build_tiny_training_world

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = build_tiny_training_world(tmp_path_factory.mktemp("ckpt_world"), num_samples=4, seed=0)
    prepare_cache(config_from_dict(tiny_run_config(), base_dir=root), rank=0, world_size=1, progress=False)
    yield root
    torch.set_num_threads(threads)


def _raw(output_dir: str) -> dict:
    from dla_train_helpers import tiny_run_config

    return tiny_run_config(output_dir, **STEPS)


@pytest.fixture(scope="module")
def straight(world):
    from dla_core.train.trainer import train

    config = config_from_dict(_raw("straight"), base_dir=world)
    return config, train(config)


@pytest.fixture(scope="module")
def killed(world, tmp_path_factory):
    """(output folder, the child's exit status) of a run SIGKILLed while writing the checkpoint of step 4."""
    raw_file = tmp_path_factory.mktemp("ckpt_child") / "raw.json"
    raw_file.write_text(json.dumps(_raw("killed")))
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(REPO_ROOT), str(raw_file), str(world), str(KILL_AT)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    return world / "killed", completed


def test_the_child_died_by_sigkill_inside_the_checkpoint(killed):
    from dla_core.train.trainer import CHECKPOINT_DIR, TRAINABLE_FILE, list_checkpoints, list_incomplete_checkpoints

    output_dir, completed = killed
    assert completed.returncode == -signal.SIGKILL, completed.stderr[-3000:]
    assert [p.name for p in list_checkpoints(output_dir)] == ["step-0000002", "step-0000003"]
    (partial,) = list_incomplete_checkpoints(output_dir)
    assert partial.parent == output_dir / CHECKPOINT_DIR and partial.name == ".partial-step-0000004"
    assert [p.name for p in partial.iterdir()] == [TRAINABLE_FILE]  # accelerate's states never written


def test_resume_latest_continues_from_the_last_complete_checkpoint_and_ends_as_an_uninterrupted_run(
    killed, straight, world, caplog
):
    from dla_train_helpers import read_loss_csv
    from safetensors.torch import load_file

    from dla_core.train.trainer import list_checkpoints, list_incomplete_checkpoints, train

    output_dir, _ = killed
    straight_config, straight_result = straight
    with caplog.at_level(logging.WARNING, logger="dla_core.train.trainer"):
        resumed = train(config_from_dict(_raw("killed"), base_dir=world), resume="latest")
    assert ".partial-step-0000004" in caplog.text and "step-0000003" in caplog.text
    assert (resumed.start_step, resumed.end_step) == (3, 6)
    ours = read_loss_csv(output_dir / "loss.csv")
    theirs = read_loss_csv(Path(straight_config.train.output_dir) / "loss.csv")
    assert [r[:2] for r in ours] == [r[:2] for r in theirs] == [(s, 1 if s <= 3 else 2) for s in range(1, 7)]
    assert all(np.isfinite(r[2]) for r in ours)
    assert np.allclose([r[2] for r in ours], [r[2] for r in theirs], rtol=1e-6, atol=1e-7)
    assert np.allclose(resumed.losses, straight_result.losses[3:], rtol=1e-6, atol=1e-7)
    for name in ("dla.safetensors", "lora.safetensors"):
        a, b = load_file(str(resumed.export_dir / name)), load_file(str(straight_result.export_dir / name))
        assert a.keys() == b.keys() and a
        for key in a:
            assert torch.isfinite(a[key]).all()
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # the run cleaned up after itself: only complete checkpoints (keep_checkpoints = 3) and no leftovers
    assert [p.name for p in list_checkpoints(output_dir)] == ["step-0000003", "step-0000004", "step-0000006"]
    assert list_incomplete_checkpoints(output_dir) == []


def test_a_half_written_step_folder_of_an_older_trainer_is_skipped_by_latest_and_refused_by_name(straight, tmp_path):
    from dla_core.train.trainer import (
        CHECKPOINT_COMPLETE,
        TRAINABLE_FILE,
        list_checkpoints,
        list_incomplete_checkpoints,
        resolve_resume,
    )

    config, _ = straight
    source = Path(config.train.output_dir)
    complete = list_checkpoints(source)
    assert complete and all((p / CHECKPOINT_COMPLETE).is_file() for p in complete)
    output_dir = tmp_path / "run"
    shutil.copytree(source / "checkpoints", output_dir / "checkpoints")
    # what an older trainer left when killed inside accelerate.save_state: the folder in place, some files missing
    legacy = output_dir / "checkpoints" / "step-0000009"
    legacy.mkdir()
    shutil.copyfile(complete[-1] / TRAINABLE_FILE, legacy / TRAINABLE_FILE)
    assert list_incomplete_checkpoints(output_dir) == [legacy]
    assert resolve_resume(output_dir, "latest") == output_dir / "checkpoints" / complete[-1].name
    with pytest.raises(DLAInputError, match="incomplete checkpoint") as info:
        resolve_resume(output_dir, str(legacy))
    assert complete[-1].name in str(info.value) and "--resume latest" in str(info.value)
    # a complete checkpoint of a run from before the marker (every file accelerate writes) still resumes
    old_style = output_dir / "checkpoints" / complete[-1].name
    (old_style / CHECKPOINT_COMPLETE).unlink()
    assert resolve_resume(output_dir, str(old_style)) == old_style
