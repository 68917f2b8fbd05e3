"""A tiny training world for self-tests: random tiny models + a synthetic data set, built offline.

    python -m dla_core.train.tiny_setup configs/tiny-run

writes ``mllm/`` (tiny InternVL), ``flux/`` + ``vae/`` (tiny diffusers FLUX transformer / VAE),
``init_dla.safetensors`` and ``manifest.jsonl`` with random reference/target PNGs: exactly what
``configs/train_tiny.yaml`` points at. The last example has two references of another shape,
so stage-2 batches mix reference layouts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ..checkpoint import init_dla, save_dla
from ..selftest_models import build_tiny_diffusers_flux, build_tiny_diffusers_vae, build_tiny_internvl
from ..spec import read_mllm_spec

# scaling_factor 2.0 (FLUX: 0.3611) gives the random VAE's latents unit-ish variance: a visible signal to learn.
TINY_VAE_SCALING = 2.0


def build_tiny_training_world(folder: str | Path, num_samples: int = 4, seed: int = 0) -> Path:
    """Write tiny models and ``num_samples`` synthetic examples under ``folder``; returns it."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    mllm = build_tiny_internvl(root / "mllm", seed=seed)
    build_tiny_diffusers_flux(root / "flux", seed=seed)
    build_tiny_diffusers_vae(root / "vae", seed=seed, scaling_factor=TINY_VAE_SCALING)
    dla = init_dla(read_mllm_spec(mllm), lap_width=32, lap_heads=2, lap_mlp_hidden=64, null_length=4, seed=seed)
    save_dla(dla, root / "init_dla.safetensors")
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(num_samples):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / f"ref{i}.png")
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(root / f"target{i}.png")
        refs: str | list[str] = f"ref{i}.png"
        if i == num_samples - 1:
            Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(root / "ref_tall.png")
            refs = [f"ref{i}.png", "ref_tall.png"]
        lines.append(
            json.dumps({"reference": refs, "prompt": f"subject {i} in a new scene", "target": f"target{i}.png"})
        )
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "tiny-run"
    print(f"tiny training world written to {build_tiny_training_world(target)}")
