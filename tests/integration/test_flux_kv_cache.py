"""Staging with ComfyUI's experimental ``FluxKVCache`` node: refused where it would be wrong, allowed where it is right.

The KV cache keeps the reference tokens' keys/values from the first model call that has
references, whatever text produced them. With references in two stages of different conditioning
(stage 2: text + references; stage 3: references, text off) stage 3 would reuse stage 2's
keys/values, so the staged samplers refuse the combination with a message. With references in one
stage only (tau2 = 0) the cache is consistent and sampling runs. ComfyUI 0.3.64 has no such node.
"""

from __future__ import annotations

import pytest
import torch
from dla_harness import pack_module

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COMMON = dict(seed=4, steps=4, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0)


def _conditionings():
    generator = torch.Generator().manual_seed(0)
    text = [
        [
            torch.randn(1, 4, 4096, generator=generator) * 0.5,
            {"pooled_output": torch.randn(1, 768, generator=generator), "guidance": 2.5},
        ]
    ]
    reference = torch.randn(1, 16, 4, 4, generator=generator)
    with_refs = [[text[0][0], {**text[0][1], "reference_latents": [reference], "reference_latents_method": "index"}]]
    refs_only = [[torch.zeros_like(text[0][0]), dict(with_refs[0][1])]]
    return text, with_refs, refs_only


@pytest.fixture(scope="module")
def flux(comfy, tiny_models_dir, tiny_names):
    import comfy.model_management
    import comfy.sd

    model = comfy.sd.load_diffusion_model(str(tiny_models_dir / "diffusion_models" / tiny_names.flux))
    yield model
    comfy.model_management.unload_all_models()


def _run(model, tau1: float, tau2: float):
    text, with_refs, refs_only = _conditionings()
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    return (
        pack_module("nodes.staged_advanced")
        .DLAStagedKSamplerAdvanced.execute(
            model, text, latent, tau1=tau1, tau2=tau2, positive_stage2=with_refs, positive_stage3=refs_only, **COMMON
        )
        .result[0]["samples"]
    )


def test_kv_cache_with_references_in_two_stages_is_refused_with_a_fix(comfy, flux):
    import nodes as comfy_nodes

    kv_node = comfy_nodes.NODE_CLASS_MAPPINGS.get("FluxKVCache")
    if kv_node is None:  # ComfyUI 0.3.64: no KV cache node; the same staging runs unpatched
        assert not pack_module("nodes.staged_guider").reference_kv_caches(flux)
        assert torch.isfinite(_run(flux, 1.0, 0.5)).all()
        return
    cached = kv_node.execute(flux).result[0]
    assert len(pack_module("nodes.staged_guider").reference_kv_caches(cached)) == 1
    error = pack_module("dla_core.errors").DLAInputError
    with pytest.raises(error, match="Flux KV Cache.*stages 2 and 3"):
        _run(cached, 1.0, 0.5)
    # References in one stage only: the cache is consistent, sampling runs.
    assert torch.isfinite(_run(cached, 1.0, 0.0)).all()
    # Without the cache the refused schedule runs.
    assert torch.isfinite(_run(flux, 1.0, 0.5)).all()


def test_kv_cache_with_one_reference_conditioning_shared_by_stages_2_and_3_runs(comfy, flux):
    """The FLUX.2 / 2511 recipe (stage 3 reuses stage 2's conditioning): one set of reference keys/values, allowed.

    A reference timing that changes the active references mid-run is refused like two conditionings.
    """
    import nodes as comfy_nodes

    kv_node = comfy_nodes.NODE_CLASS_MAPPINGS.get("FluxKVCache")
    text, with_refs, _ = _conditionings()
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    node = pack_module("nodes.staged_advanced").DLAStagedKSamplerAdvanced
    model = flux if kv_node is None else kv_node.execute(flux).result[0]
    shared = node.execute(model, text, latent, tau1=0.95, tau2=0.5, positive_stage2=with_refs, **COMMON)
    assert torch.isfinite(shared.result[0]["samples"]).all()
    if kv_node is None:
        return
    two_refs = [[text[0][0], {**with_refs[0][1], "reference_latents": with_refs[0][1]["reference_latents"] * 2}]]
    error = pack_module("dla_core.errors").DLAInputError
    with pytest.raises(error, match="Flux KV Cache.*reference"):
        node.execute(
            model, text, latent, tau1=0.95, tau2=0.5, positive_stage2=two_refs, reference_timing="0.6-0", **COMMON
        )
