"""The staged samplers fit empty latents to the model exactly as this ComfyUI's KSampler does.

Newer ComfyUI tags empty latents with the VAE downscale they assumed (``downscale_ratio_spacial``:
8 for *Empty Latent Image*) and its KSampler resizes an empty latent to the model's own ratio: a
128x96 *Empty Latent Image* on FLUX.2 (ratio 16) samples an 8x6 latent, i.e. a 128x96 image. The
staged samplers must do the same and stay bit-identical to the native KSampler whenever every
step falls in one stage, for FLUX.1, Qwen-Image and FLUX.2 latents. ComfyUI 0.3.64 has neither
tags nor FLUX.2: there a tag written by a newer node must be ignored as its KSampler ignores it.
"""

from __future__ import annotations

import pytest
import torch
from dla_harness import pack_module

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 11
STEPS = 2
WIDTH, HEIGHT = 128, 96


def _random(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.5


@pytest.fixture(scope="module")
def models(comfy, tiny_models_dir, tiny_names, tmp_path_factory):
    """name -> (ModelPatcher, positive conditioning) for the three latent families."""
    import comfy.model_management
    import comfy.sd
    from tiny_flux2 import build_tiny_flux2, comfy_has_flux2

    from dla_tiny.cache import cached_build
    from dla_tiny.qwen_image import build_tiny_qwen_image_dit

    root = tmp_path_factory.mktemp("latent-tag-models")
    out = {
        "flux1": (
            comfy.sd.load_diffusion_model(str(tiny_models_dir / "diffusion_models" / tiny_names.flux)),
            [[_random(1, 4, 4096, seed=1), {"pooled_output": _random(1, 768, seed=2), "guidance": 2.5}]],
        ),
        "qwen_image": (
            comfy.sd.load_diffusion_model(str(cached_build(build_tiny_qwen_image_dit, root, seed=0))),
            [[_random(1, 6, 3584, seed=3), {}]],
        ),
    }
    if comfy_has_flux2():
        flux2 = comfy.sd.load_diffusion_model(str(cached_build(build_tiny_flux2, root, seed=0)))
        out["flux2"] = (flux2, [[_random(1, 5, 96, seed=4), {"guidance": 4.0}]])
    yield out
    comfy.model_management.unload_all_models()


def _empty_latent(tag: int | None) -> dict:
    import nodes as comfy_nodes

    latent = comfy_nodes.EmptyLatentImage().generate(WIDTH, HEIGHT, 1)[0]
    if tag is not None:  # as a newer ComfyUI's empty-latent node writes it
        latent = {**latent, "downscale_ratio_spacial": tag}
    return latent


def _native(model, positive, latent) -> dict:
    import nodes as comfy_nodes

    negative = [[torch.zeros_like(positive[0][0]), dict(positive[0][1])]]  # never evaluated at cfg 1
    return comfy_nodes.common_ksampler(model, SEED, STEPS, 1.0, "euler", "simple", positive, negative, latent)[0]


def _staged_both(model, positive, latent) -> list[dict]:
    """Staged KSampler and Staged KSampler (Advanced) with every step in stage 1 (tau 0/0)."""
    common = dict(
        seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0, tau1=0.0, tau2=0.0
    )
    staged = pack_module("nodes.sampler_nodes").DLAStagedKSampler.execute(model, positive, latent, **common).result[0]
    advanced = (
        pack_module("nodes.staged_advanced")
        .DLAStagedKSamplerAdvanced.execute(model, positive, latent, **common)
        .result[0]
    )
    return [staged, advanced]


@pytest.mark.parametrize("family", ["flux1", "qwen_image", "flux2"])
def test_staged_samplers_fit_tagged_empty_latents_like_native_ksampler(models, family):
    from tiny_flux2 import comfy_has_flux2

    if family == "flux2" and not comfy_has_flux2():
        # This ComfyUI has no FLUX.2 and no latent tags: a tag a newer node wrote is ignored by its KSampler,
        # and must be by the staged samplers (FLUX.1 model, a FLUX.2-style ratio-16 tag).
        family, tag = "flux1", 16
    else:
        tag = 8
    model, positive = models[family]
    latent = _empty_latent(tag)
    native = _native(model, positive, latent)
    for out in _staged_both(model, positive, latent):
        assert out["samples"].shape == native["samples"].shape
        assert torch.equal(out["samples"], native["samples"])
        assert out.keys() == native.keys()  # the size tag is consumed like native


def test_flux2_with_a_generic_empty_latent_makes_an_image_of_the_asked_size(models):
    """The reported bug: 128x96 *Empty Latent Image* on FLUX.2 gave a 256x192 image from the staged samplers."""
    from tiny_flux2 import comfy_has_flux2

    if not comfy_has_flux2():
        import comfy.latent_formats

        assert not hasattr(comfy.latent_formats, "Flux2")  # nothing to fit: 0.3.64 has no FLUX.2
        return
    model, positive = models["flux2"]
    ratio = model.get_model_object("latent_format").spacial_downscale_ratio
    assert ratio == 16
    for out in _staged_both(model, positive, _empty_latent(8)):
        assert tuple(out["samples"].shape[-2:]) == (HEIGHT // ratio, WIDTH // ratio)
