"""The staged schedule inside ComfyUI: stages per model call, mixed schedules, the GUIDER path."""

from __future__ import annotations

import pytest
import torch
from dla_harness import add_dla_pipeline, add_staged_sampler, pack_module

pytestmark = pytest.mark.integration

# ComfyUI's FLUX sampling (shift 1.15), "simple" scheduler, 2 steps: model calls at t = 1.0, 0.7595.
T_STEP2 = 0.7595


def _save(graph, node):
    return graph.add("SaveLatent", samples=graph.out(node), filename_prefix="latents/dla_schedule")


def test_mixed_schedule_differs_from_every_single_stage(comfy, graph):
    nodes = add_dla_pipeline(graph)
    mixed = add_staged_sampler(graph, nodes)  # tau 0.95 / 0.85: step 1 in stage 1, step 2 in stage 3
    singles = []
    for stage in ("1: MLLM only", "2: MLLM + identity", "3: identity only"):
        conditioning = graph.add(
            "DLAStageConditioning", positive=graph.out(nodes.positive), stage=stage, identity=graph.out(nodes.identity)
        )
        singles.append(
            graph.add(
                "KSampler",
                model=graph.out(nodes.model),
                seed=7,
                steps=2,
                cfg=1.0,
                sampler_name="euler",
                scheduler="simple",
                positive=graph.out(conditioning),
                negative=graph.out(conditioning),
                latent_image=graph.out(nodes.latent),
                denoise=1.0,
            )
        )
    for node in [mixed, *singles]:
        _save(graph, node)
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    mixed_latent = comfy.output(mixed)["samples"]
    for single in singles:
        assert not torch.allclose(mixed_latent, comfy.output(single)["samples"], atol=1e-4)


# max |staged - native composition| measured 1.91e-06 on both rows (ComfyUI 0.3.64 and 0.33.0); see the test below.
COMPOSITION_ATOL = 1e-5


def test_mixed_schedule_equals_native_advanced_samplers_over_the_split_schedule(comfy, graph):
    """tau 0.95 / 0.85 over 2 euler steps = step 1 (t=1) with stage 1's conditioning, then step 2 (t=0.7595) with
    stage 3's: two native KSamplerAdvanced over the same "simple" schedule, split after step 1.

    Not bit-identical: for FLUX (CONST) ComfyUI divides the first pass's leftover-noise latent by (1 - sigma)
    (``inverse_noise_scaling``) and the second pass multiplies it by (1 - sigma) again (``noise_scaling`` with zero
    noise), which rounds in float32: max |diff| 1.91e-06 measured on both rows; euler keeps no state across the
    split. A wrong stage for step 2 moves the latent by ~0.66 (a stage selection shifted by 0.1 in t, tried), and the
    composition with stage 2 in step 2 must differ by > 1000x the tolerance (asserted).
    """
    nodes = add_dla_pipeline(graph)
    mixed = add_staged_sampler(graph, nodes)
    stage1 = nodes.positive  # stage 1: the DLA's conditioning as it is
    stage3 = graph.add(
        "DLAStageConditioning",
        positive=graph.out(nodes.positive),
        stage="3: identity only",
        identity=graph.out(nodes.identity),
    )
    common = dict(
        model=graph.out(nodes.model), noise_seed=7, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple"
    )
    first = graph.add(
        "KSamplerAdvanced",
        add_noise="enable",
        positive=graph.out(stage1),
        negative=graph.out(stage1),
        latent_image=graph.out(nodes.latent),
        start_at_step=0,
        end_at_step=1,
        return_with_leftover_noise="enable",
        **common,
    )
    second = graph.add(
        "KSamplerAdvanced",
        add_noise="disable",
        positive=graph.out(stage3),
        negative=graph.out(stage3),
        latent_image=graph.out(first),
        start_at_step=1,
        end_at_step=10000,
        return_with_leftover_noise="disable",
        **common,
    )
    # The same composition with stage 2 in the second step: what a wrong split would give.
    stage2 = graph.add(
        "DLAStageConditioning",
        positive=graph.out(nodes.positive),
        stage="2: MLLM + identity",
        identity=graph.out(nodes.identity),
    )
    wrong = graph.add(
        "KSamplerAdvanced",
        add_noise="disable",
        positive=graph.out(stage2),
        negative=graph.out(stage2),
        latent_image=graph.out(first),
        start_at_step=1,
        end_at_step=10000,
        return_with_leftover_noise="disable",
        **common,
    )
    for node in (mixed, second, wrong):
        _save(graph, node)
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    mixed_latent, native_latent = comfy.output(mixed)["samples"], comfy.output(second)["samples"]
    difference = (mixed_latent - native_latent).abs().max().item()
    print(f"mixed staged vs native composition: max |diff| = {difference:.3g}")
    assert difference <= COMPOSITION_ATOL
    assert (comfy.output(wrong)["samples"] - native_latent).abs().max().item() > 1000 * COMPOSITION_ATOL


def test_guider_picks_the_stage_of_every_model_call_of_a_second_order_sampler(comfy, graph):
    nodes = add_dla_pipeline(graph)
    guider = graph.add(
        "DLAStagedGuider",
        model=graph.out(nodes.model),
        positive=graph.out(nodes.positive),
        cfg=1.0,
        tau1=0.95,
        tau2=0.85,
        identity=graph.out(nodes.identity),
    )
    sampler = graph.add("KSamplerSelect", sampler_name="heun")
    sigmas = graph.add("BasicScheduler", model=graph.out(nodes.model), scheduler="simple", steps=2, denoise=1.0)
    noise = graph.add("RandomNoise", noise_seed=7)
    sampled = graph.add(
        "SamplerCustomAdvanced",
        noise=graph.out(noise),
        guider=graph.out(guider),
        sampler=graph.out(sampler),
        sigmas=graph.out(sigmas),
        latent_image=graph.out(nodes.latent),
    )
    _save(graph, sampled)
    with pack_module("nodes.staged_guider").record_model_calls() as calls:
        result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    log = [(call.t, call.stage) for call in calls]
    # heun: call at t=1 (stage 1), its corrector at t=0.7595 (stage 3), then the last (Euler) step at 0.7595.
    assert [stage for _, stage in log] == [1, 3, 3]
    assert [round(t, 4) for t, _ in log] == [1.0, T_STEP2, T_STEP2]
    assert torch.isfinite(comfy.output(sampled)["samples"]).all()
