"""Staged sampling inside ComfyUI: single-stage schedules are bit-identical to native sampling.

Tiny FLUX, 64x64 px (8x8 latents), 2 steps. With ComfyUI's FLUX sampling (shift 1.15) and the
"simple" scheduler the model is called at t = 1.0 and 0.7595 (denoise 1), or at t = 0.7595
and 0.5128 (denoise 0.5: the last 2 steps of 4), so:
stage 1 everywhere: tau 0/0; stage 2 everywhere: tau1 = 1, tau2 = 0 with denoise 0.5;
stage 3 everywhere: tau1 = tau2 = 1 with denoise 0.5.
"""

from __future__ import annotations

import pytest
import torch
from dla_harness import add_dla_pipeline, add_staged_sampler

pytestmark = pytest.mark.integration

SAMPLERS = ["euler", "dpmpp_2m"]  # first order; second order (multistep). heun: see the override test


def _native(graph, nodes, positive, sampler_name, denoise):
    return graph.add(
        "KSampler",
        model=graph.out(nodes.model),
        seed=7,
        steps=2,
        cfg=1.0,
        sampler_name=sampler_name,
        scheduler="simple",
        positive=graph.out(positive),
        negative=graph.out(positive),
        latent_image=graph.out(nodes.latent),
        denoise=denoise,
    )


def _with_native_identity(graph, nodes, conditioning):
    """conditioning + reference latent through ComfyUI's own nodes (VAEEncode, ReferenceLatent, method)."""
    encoded = graph.add("VAEEncode", pixels=graph.out(nodes.image), vae=graph.out(nodes.vae))
    referenced = graph.add("ReferenceLatent", conditioning=graph.out(conditioning), latent=graph.out(encoded))
    return graph.add(
        "FluxKontextMultiReferenceLatentMethod", conditioning=graph.out(referenced), reference_latents_method="offset"
    )


def _run_pair(comfy, graph, staged, native):
    for node in (staged, native):
        graph.add("SaveLatent", samples=graph.out(node), filename_prefix="latents/dla_test")
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    return comfy.output(staged)["samples"], comfy.output(native)["samples"]


@pytest.mark.parametrize("sampler_name", SAMPLERS)
def test_stage1_only_schedule_equals_native_ksampler_with_mllm_conditioning(comfy, graph, sampler_name):
    nodes = add_dla_pipeline(graph)
    staged = add_staged_sampler(graph, nodes, sampler_name=sampler_name, tau1=0.0, tau2=0.0)
    native = _native(graph, nodes, nodes.positive, sampler_name, 1.0)
    staged_latent, native_latent = _run_pair(comfy, graph, staged, native)
    assert torch.isfinite(staged_latent).all()
    assert torch.equal(staged_latent, native_latent)


@pytest.mark.parametrize("sampler_name", SAMPLERS)
def test_stage2_only_schedule_equals_native_ksampler_with_reference_latents(comfy, graph, sampler_name):
    nodes = add_dla_pipeline(graph)
    staged = add_staged_sampler(graph, nodes, sampler_name=sampler_name, tau1=1.0, tau2=0.0, denoise=0.5)
    native = _native(graph, nodes, _with_native_identity(graph, nodes, nodes.positive), sampler_name, 0.5)
    staged_latent, native_latent = _run_pair(comfy, graph, staged, native)
    assert torch.equal(staged_latent, native_latent)


@pytest.mark.parametrize("sampler_name", SAMPLERS)
def test_stage3_only_schedule_equals_native_ksampler_with_stage3_conditioning(comfy, graph, sampler_name):
    nodes = add_dla_pipeline(graph)
    staged = add_staged_sampler(graph, nodes, sampler_name=sampler_name, tau1=1.0, tau2=1.0, denoise=0.5)
    stage3 = graph.add(
        "DLAStageConditioning",
        positive=graph.out(nodes.positive),
        stage="3: identity only",
        identity=graph.out(nodes.identity),
    )
    native = _native(graph, nodes, stage3, sampler_name, 0.5)
    staged_latent, native_latent = _run_pair(comfy, graph, staged, native)
    assert torch.equal(staged_latent, native_latent)


def test_stage3_override_equals_native_ksampler_built_from_native_nodes_only(comfy, graph):
    nodes = add_dla_pipeline(graph)
    zero = graph.add("ConditioningZeroOut", conditioning=graph.out(nodes.positive))
    staged = add_staged_sampler(
        graph, nodes, sampler_name="heun", tau1=1.0, tau2=1.0, denoise=0.5, stage3_conditioning=graph.out(zero)
    )
    native = _native(graph, nodes, _with_native_identity(graph, nodes, zero), "heun", 0.5)
    staged_latent, native_latent = _run_pair(comfy, graph, staged, native)
    assert torch.equal(staged_latent, native_latent)


# cfg > 1: ComfyUI evaluates the negative (at cfg 1 it never does, so the tests above cannot see it).
CFG = 2.5


def _native_cfg(graph, nodes, positive, negative, denoise):
    return graph.add(
        "KSampler",
        model=graph.out(nodes.model),
        seed=7,
        steps=2,
        cfg=CFG,
        sampler_name="euler",
        scheduler="simple",
        positive=graph.out(positive),
        negative=graph.out(negative),
        latent_image=graph.out(nodes.latent),
        denoise=denoise,
    )


def _mllm_off(graph, nodes, identity: bool):
    """The DLA's "MLLM off" conditioning (null tokens + null pooled), with or without the identity (pack's node)."""
    extra = {"identity": graph.out(nodes.identity)} if identity else {}
    return graph.add("DLAStageConditioning", positive=graph.out(nodes.positive), stage="3: identity only", **extra)


@pytest.mark.parametrize("stage", [1, 2])
def test_cfg_above_one_with_a_negative_equals_native_ksampler(comfy, graph, stage):
    """A connected negative is the unconditional of every stage (with the stage's references from stage 2 on)."""
    nodes = add_dla_pipeline(graph)
    negative = graph.add("ConditioningZeroOut", conditioning=graph.out(nodes.positive))
    taus, denoise = {1: ((0.0, 0.0), 1.0), 2: ((1.0, 0.0), 0.5)}[stage]
    staged = add_staged_sampler(
        graph, nodes, cfg=CFG, tau1=taus[0], tau2=taus[1], denoise=denoise, negative=graph.out(negative)
    )
    if stage == 1:
        native = _native_cfg(graph, nodes, nodes.positive, negative, denoise)
    else:
        native = _native_cfg(
            graph,
            nodes,
            _with_native_identity(graph, nodes, nodes.positive),
            _with_native_identity(graph, nodes, negative),
            denoise,
        )
    # Not vacuous: the same sampler with the positive as its own negative (what ignoring the negative would give).
    ignored = add_staged_sampler(
        graph, nodes, cfg=CFG, tau1=taus[0], tau2=taus[1], denoise=denoise, negative=graph.out(nodes.positive)
    )
    graph.add("SaveLatent", samples=graph.out(ignored), filename_prefix="latents/dla_test")
    staged_latent, native_latent = _run_pair(comfy, graph, staged, native)
    assert torch.equal(staged_latent, native_latent)
    assert not torch.allclose(staged_latent, comfy.output(ignored)["samples"], atol=1e-4)


@pytest.mark.parametrize("stage", [1, 2])
def test_cfg_above_one_without_a_negative_uses_the_dla_null_as_unconditional(comfy, graph, stage):
    """No negative connected: the unconditional is the DLA's "MLLM off" conditioning (+ the stage's references)."""
    nodes = add_dla_pipeline(graph)
    taus, denoise = {1: ((0.0, 0.0), 1.0), 2: ((1.0, 0.0), 0.5)}[stage]
    staged = add_staged_sampler(graph, nodes, cfg=CFG, tau1=taus[0], tau2=taus[1], denoise=denoise)
    if stage == 1:
        native = _native_cfg(graph, nodes, nodes.positive, _mllm_off(graph, nodes, identity=False), denoise)
    else:
        native = _native_cfg(
            graph,
            nodes,
            _with_native_identity(graph, nodes, nodes.positive),
            _with_native_identity(graph, nodes, _mllm_off(graph, nodes, identity=False)),
            denoise,
        )
    # Not vacuous: a zeroed text as unconditional gives another result.
    zero = graph.add("ConditioningZeroOut", conditioning=graph.out(nodes.positive))
    zeroed = add_staged_sampler(
        graph, nodes, cfg=CFG, tau1=taus[0], tau2=taus[1], denoise=denoise, negative=graph.out(zero)
    )
    graph.add("SaveLatent", samples=graph.out(zeroed), filename_prefix="latents/dla_test")
    staged_latent, native_latent = _run_pair(comfy, graph, staged, native)
    assert torch.equal(staged_latent, native_latent)
    assert not torch.allclose(staged_latent, comfy.output(zeroed)["samples"], atol=1e-4)


def test_stage3_conditioning_carries_the_learned_null_of_the_dla_file(comfy, graph, tiny_models_dir, tiny_names):
    """Stage 3's text is exactly the DLA file's null tokens and null pooled vector (the tiny DLA's null is not zero)."""
    from dla_core.checkpoint import load_dla

    nodes = add_dla_pipeline(graph)
    stage3 = _mllm_off(graph, nodes, identity=True)
    graph.add("PreviewAny", source=graph.out(stage3))  # an output node, so ComfyUI runs the stage-3 node
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    ((tokens, values),) = comfy.output(stage3)
    dla = load_dla(tiny_models_dir / "dla" / tiny_names.dla)
    assert dla.null_tokens.abs().min() > 0 and dla.null_pooled.abs().min() > 0  # the tree's DLA has a learned null
    assert torch.equal(tokens.cpu(), dla.null_tokens[None].float())
    assert torch.equal(values["pooled_output"].cpu(), dla.null_pooled[None].float())
    assert values["guidance"] == 2.5 and values["reference_latents"]  # the rest of the stage-3 conditioning stays
