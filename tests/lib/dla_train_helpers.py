"""TEST helpers for training runs (never used by the pack itself)."""

from __future__ import annotations

import csv
from pathlib import Path


def read_loss_csv(path: str | Path) -> list[tuple[int, int, float]]:
    """(step, stage, loss) rows of a run's ``loss.csv`` (written by ``dla_core.train.trainer``)."""
    rows = list(csv.DictReader(Path(path).read_text().splitlines()))
    return [(int(r["step"]), int(r["stage"]), float(r["loss"])) for r in rows]


def tiny_run_config(output_dir: str = "out", **train) -> dict:
    """The raw config (a dict, paths relative to the world's root) of a short run on the world that
    ``dla_core.train.tiny_setup.build_tiny_training_world`` builds; ``train`` overrides ``train.*`` keys."""
    raw = {
        "model": {
            "mllm": "mllm",
            "flux": "flux",
            "vae": "vae",
            "init_dla": "init_dla.safetensors",
            "mllm_dtype": "float32",
        },
        "data": {
            "manifest": "manifest.jsonl",
            "cache_dir": "cache",
            "resolution": 32,
            "reference_size": 32,
            "shard_size": 2,
        },
        "lora": {"rank": 8},
        "train": {
            "output_dir": output_dir,
            "stage1_steps": 20,
            "stage2_steps": 20,
            "batch_size": 2,
            "mixed_precision": "no",
            "lr_lora": 1e-2,
            "lr_dla": 1e-3,
            "checkpoint_every": 100,
            "progress_bar": False,
            "seed": 0,
        },
    }
    raw["train"].update(train)
    return raw
