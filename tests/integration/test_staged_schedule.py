"""The staged schedule inside ComfyUI: stages per model call, mixed schedules, the GUIDER path."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.integration

# ComfyUI's FLUX sampling (shift 1.15), "simple" scheduler, 2 steps: model calls at t = 1.0, 0.7595.
T_STEP2 = 0.7595


def _save(graph, node):
    return graph.add("SaveLatent", samples=graph.out(node), filename_prefix="latents/dla_schedule")


def test_mixed_schedule_differs_from_every_single_stage(comfy, graph, dla_pipeline, staged_sampler):
    nodes = dla_pipeline(graph)
    mixed = staged_sampler(graph, nodes)  # tau 0.95 / 0.85: step 1 in stage 1, step 2 in stage 3
    singles = []
    for stage in ("1: MLLM only", "2: MLLM + identity", "3: identity only"):
        conditioning = graph.add("DLAStageConditioning", positive=graph.out(nodes.positive), stage=stage, identity=graph.out(nodes.identity))
        singles.append(graph.add(
            "KSampler", model=graph.out(nodes.model), seed=7, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple",
            positive=graph.out(conditioning), negative=graph.out(conditioning), latent_image=graph.out(nodes.latent), denoise=1.0,
        ))
    for node in [mixed, *singles]:
        _save(graph, node)
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    mixed_latent = comfy.output(mixed)["samples"]
    for single in singles:
        assert not torch.allclose(mixed_latent, comfy.output(single)["samples"], atol=1e-4)


def test_guider_picks_the_stage_of_every_model_call_of_a_second_order_sampler(comfy, graph, dla_pipeline):
    nodes = dla_pipeline(graph)
    guider = graph.add(
        "DLAStagedGuider", model=graph.out(nodes.model), positive=graph.out(nodes.positive), cfg=1.0, tau1=0.95, tau2=0.85,
        identity=graph.out(nodes.identity),
    )
    sampler = graph.add("KSamplerSelect", sampler_name="heun")
    sigmas = graph.add("BasicScheduler", model=graph.out(nodes.model), scheduler="simple", steps=2, denoise=1.0)
    noise = graph.add("RandomNoise", noise_seed=7)
    sampled = graph.add(
        "SamplerCustomAdvanced", noise=graph.out(noise), guider=graph.out(guider), sampler=graph.out(sampler),
        sigmas=graph.out(sigmas), latent_image=graph.out(nodes.latent),
    )
    _save(graph, sampled)
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    log = comfy.output(guider).stage_log
    # heun: call at t=1 (stage 1), its corrector at t=0.7595 (stage 3), then the last (Euler) step at 0.7595.
    assert [stage for _, stage in log] == [1, 3, 3]
    assert [round(t, 4) for t, _ in log] == [1.0, T_STEP2, T_STEP2]
    assert torch.isfinite(comfy.output(sampled)["samples"]).all()
