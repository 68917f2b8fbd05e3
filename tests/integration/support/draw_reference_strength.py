"""Draws docs/images/reference_strength_tiny.png: the same seed at three reference strengths, on the tests' tiny model.

The tiny FLUX.1 Kontext of the tests (random weights, 256 wide) inside a real ComfyUI: one reference latent
(a bright disc on a dark ground, in latent space), the same text, seed and 8 Euler steps through the
pack's Staged KSampler (Advanced) with every step in one stage, at ``reference_strength`` 1, 0.5 and 0,
and, for comparison, the same conditioning without the reference. Top row: the first three latent channels
as RGB (a random-weight VAE would only add noise); bottom row: how far each output is from the one without
the reference (mean |difference| over channels, one grey scale for all), which strength 0 brings to zero.
The picture is labelled as a tiny random model: it shows what the strength does to the computation, not
image quality.

usage: COMFYUI_PATH=... python tests/integration/support/draw_reference_strength.py [out.png]
(the tiny models from $DLA_TINY_MODELS_CACHE when set, else built in a temp dir)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
sys.path[len(sys.path) :] = [str(REPO_ROOT), str(REPO_ROOT / "tests" / "lib"), str(REPO_ROOT / "tests" / "integration")]

import dla_harness as harness  # noqa: E402

OUT = REPO_ROOT / "docs" / "images" / "reference_strength_tiny.png"
STRENGTHS = ("1", "0.5", "0")
PANEL = 192
SEED = 3
STEPS = 8
TITLE = (
    "reference_strength on the tests' TINY RANDOM FLUX.1 Kontext (random weights, not a real model), same seed. "
    "Top: latent channels 1-3. Bottom: |output - output without the reference|, one scale."
)


def _latent_rgb(latent):
    """First three channels of ``[1, C, H, W]`` as an RGB PIL image, each channel stretched to 0..255."""
    import torch
    from PIL import Image

    rgb = latent[0, :3].float()
    low = rgb.flatten(1).min(dim=1).values[:, None, None]
    high = rgb.flatten(1).max(dim=1).values[:, None, None]
    rgb = ((rgb - low) / (high - low + 1e-8) * 255).round().to(torch.uint8)
    return Image.fromarray(rgb.permute(1, 2, 0).numpy(), "RGB").resize((PANEL, PANEL), Image.NEAREST)


def _heat(difference, scale: float):
    """A ``[H, W]`` map of non-negative values as a grey PIL image, 0 black and ``scale`` white."""
    import torch
    from PIL import Image

    grey = (difference / (scale + 1e-12) * 255).clamp(0, 255).round().to(torch.uint8)
    return Image.fromarray(grey.numpy(), "L").convert("RGB").resize((PANEL, PANEL), Image.NEAREST)


def _sample_all():
    """(reference latent, {strength: output}, output without the reference) on the tiny Kontext."""
    import torch

    comfy_path, _ = harness.find_comfyui()
    cache = os.environ.get("DLA_TINY_MODELS_CACHE")
    with tempfile.TemporaryDirectory(prefix="dla-draw-strength-") as work:
        work = Path(work)
        models = harness.cached_tiny_models_tree(Path(cache) if cache else work, harness.tiny_flux_width(comfy_path))
        harness.start_comfy_in_process(comfy_path, harness.make_comfy_base_directory(work / "comfy", models))
        import comfy.sd
        import node_helpers

        model = comfy.sd.load_diffusion_model(str(models / "diffusion_models" / harness.tiny_names().flux))
        generator = torch.Generator().manual_seed(0)
        tokens, pooled = torch.randn(1, 4, 4096, generator=generator) * 0.5, torch.randn(1, 768, generator=generator)
        text = [[tokens, {"pooled_output": pooled, "guidance": 2.5}]]
        side = 16
        y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        disc = (((y - side / 2 + 0.5) ** 2 + (x - side / 2 + 0.5) ** 2) < (side / 3) ** 2).float()
        reference = (disc * 2 - 1)[None, None] * torch.linspace(1.5, -1.5, 16)[None, :, None, None]
        with_reference = node_helpers.conditioning_set_values(text, {"reference_latents": [reference]}, append=True)
        latent = {"samples": torch.zeros(1, 16, side, side)}
        node = harness.pack_module("nodes.staged_advanced").DLAStagedKSamplerAdvanced
        common = dict(seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0)

        def sample(positive, strength: str = ""):
            result = node.execute(model, positive, latent, tau1=0.0, tau2=0.0, reference_strength=strength, **common)
            return result.result[0]["samples"]

        return reference, {value: sample(with_reference, value) for value in STRENGTHS}, sample(text)


def draw(out: Path) -> Path:
    from PIL import Image, ImageDraw

    if harness.find_comfyui()[0] is None:
        raise SystemExit(harness.find_comfyui()[1])
    reference, outputs, alone = _sample_all()
    differences = {value: (output - alone).abs().mean(dim=1)[0] for value, output in outputs.items()}
    scale = max(float(difference.max()) for difference in differences.values())
    columns = [("reference latent", _latent_rgb(reference), None)]
    columns += [(f"strength {value}", _latent_rgb(outputs[value]), differences[value]) for value in STRENGTHS]
    columns.append(("no reference", _latent_rgb(alone), None))

    gap, top, label = 8, 30, 24
    canvas = Image.new("RGB", (len(columns) * (PANEL + gap) + gap, top + 2 * (PANEL + label)), "white")
    pen = ImageDraw.Draw(canvas)
    pen.text((gap, 8), TITLE, fill="black")
    for index, (name, image, difference) in enumerate(columns):
        left = gap + index * (PANEL + gap)
        canvas.paste(image, (left, top))
        pen.text((left, top + PANEL + 6), name, fill="black")
        if difference is not None:
            canvas.paste(_heat(difference, scale), (left, top + PANEL + label))
            pen.text(
                (left, top + 2 * PANEL + label + 6), f"mean |difference| {float(difference.mean()):.4f}", fill="black"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, optimize=True)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    draw(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
