"""TEST builders: a tiny FLUX.2 training world (diffusers ``Flux2Transformer2DModel``, ``AutoencoderKLFlux2``,
a tiny Qwen3-VL or Mistral-3 MLLM, an identity-initialised DLA and a synthetic data set). Needs diffusers >= 0.37.

The [klein]-like transformer has no guidance embedding, the [dev]-like one has one; both read context tokens of
three stacked MLLM layers (``3 x`` the MLLM width), as FLUX.2 reads its text encoder. The DLA is built with
``init-dla``'s identity init for the FLUX.2 target (layers remapped to the tiny MLLM's 1, 2, 3), so training
starts from the native-style stacked conditioning.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TINY_FLUX2_LAYERS = [1, 2, 3]  # the tiny MLLM's stand-ins for FLUX.2's 9/18/27 (or 10/20/30)
TINY_MLLM_WIDTH = 64


def tiny_flux2_transformer_config(context_width: int, guidance: bool) -> dict:
    """A 128-wide FLUX.2 (one head of FLUX.2's 128 = 4 x 32 rope dims), 1 double + 1 single block."""
    return {
        "patch_size": 1,
        "in_channels": 128,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 128,
        "num_attention_heads": 1,
        "joint_attention_dim": context_width,
        "timestep_guidance_channels": 256,
        "mlp_ratio": 3.0,
        "axes_dims_rope": [32, 32, 32, 32],
        "rope_theta": 2000,
        "guidance_embeds": guidance,
    }


def build_tiny_diffusers_flux2(folder: str | Path, context_width: int, guidance: bool, seed: int = 0) -> Path:
    from diffusers import Flux2Transformer2DModel

    from dla_core.selftest_models import randomize

    model = Flux2Transformer2DModel(**tiny_flux2_transformer_config(context_width, guidance))
    randomize(model, seed, std=0.05)
    model.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def build_tiny_flux2_vae(folder: str | Path, seed: int = 0) -> Path:
    """A tiny ``AutoencoderKLFlux2`` (8x + 2x2 patchify = 16 px per token, 128 channels) whose batch-norm statistics
    are those of its own latents, so model-space latents have unit-ish variance (as FLUX.2's)."""
    from diffusers import AutoencoderKLFlux2

    from dla_core.flux.flux2 import encode_flux2_latent
    from dla_core.selftest_models import randomize

    vae = AutoencoderKLFlux2(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=64)
    randomize(vae, seed, std=0.1)
    pixels = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.no_grad():
        latent = encode_flux2_latent(vae.eval(), pixels)  # with running mean 0 / var 1: the raw patchified latent
        vae.bn.running_mean.copy_(latent.mean(dim=(1, 2)))
        vae.bn.running_var.copy_(latent.var(dim=(1, 2)) + 1e-3)
    vae.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def build_tiny_flux2_training_world(
    folder: str | Path,
    variant: str = "klein",
    mllm_family: str = "qwen3_vl",
    num_samples: int = 4,
    seed: int = 0,
) -> Path:
    """Write ``mllm/``, ``flux2/``, ``vae/``, ``init_dla.safetensors`` and ``manifest.jsonl`` under ``folder``.

    ``variant``: ``klein`` (no guidance embedding, DLA target ``flux2_klein``) or ``dev`` (guidance, ``flux2``).
    """
    from dla_core.checkpoint import init_dla, save_dla
    from dla_core.spec import read_mllm_spec
    from dla_tiny.mllm import build_tiny_mllm

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    mllm = build_tiny_mllm(mllm_family, root / "mllm", seed=seed, hidden_size=TINY_MLLM_WIDTH)
    spec = read_mllm_spec(mllm)
    context = len(TINY_FLUX2_LAYERS) * spec.width
    build_tiny_diffusers_flux2(root / "flux2", context, guidance=variant == "dev", seed=seed)
    build_tiny_flux2_vae(root / "vae", seed=seed)
    target = {"klein": "flux2_klein", "dev": "flux2"}[variant]
    family = "mistral3" if target == "flux2" else "qwen3_vl"
    if spec.family != family:
        raise ValueError(f"the {variant} world reads a {family} MLLM, got {spec.family}")
    dla = init_dla(
        spec,
        target=target,
        init="identity",
        layer_indices=TINY_FLUX2_LAYERS,
        context_width=context,
        lap_blocks=1,
        lap_heads=2,
        lap_mlp_hidden=32,
        null_length=4,
        seed=seed,
    )
    save_dla(dla, root / "init_dla.safetensors")
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(num_samples):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / f"ref{i}.png")
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / f"target{i}.png")
        refs: str | list[str] = f"ref{i}.png"
        if i == num_samples - 1:
            Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(root / "ref_tall.png")
            refs = [f"ref{i}.png", "ref_tall.png"]
        lines.append(
            json.dumps({"reference": refs, "prompt": f"subject {i} in a new scene", "target": f"target{i}.png"})
        )
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


TINY_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "train_flux2_klein_tiny.yaml"
TINY_PREFIX = "tiny-run-flux2/"


def tiny_flux2_run_config(output_dir: str = "out", **train) -> dict:
    """configs/train_flux2_klein_tiny.yaml as a raw config with its paths relative to the world's root (the
    ``tiny-run-flux2/`` prefix dropped); ``output_dir`` and ``train`` override ``train.*``."""
    import yaml

    raw = yaml.safe_load(TINY_CONFIG.read_text())
    for section in raw.values():
        for key, value in section.items():
            if isinstance(value, str) and value.startswith(TINY_PREFIX):
                section[key] = value[len(TINY_PREFIX) :]
    raw["train"].update(output_dir=output_dir, **train)
    return raw
