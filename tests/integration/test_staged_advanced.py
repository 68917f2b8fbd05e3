"""DLAStagedKSamplerAdvanced in a real ComfyUI on the tiny FLUX (Kontext-style reference latents).

When every step falls in one stage, the advanced staged sampler must be bit-identical to
ComfyUI's own KSampler given that stage's conditioning. Stage conditionings follow the
Kontext recipe: stage 1 text only, stage 2 text + reference latents, stage 3 the reference
latents with the text zeroed.
"""

from __future__ import annotations

import json

import pytest
import torch
from dla_harness import Graph, add_dla_pipeline, pack_module

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 3
STEPS = 2
DENOISE = 0.6  # int(steps / denoise) > steps, so the first sigma is below 1 and every stage is reachable
TAUS_FOR_STAGE = {1: (0.0, 0.0), 2: (1.0, 0.0), 3: (1.0, 1.0)}


def _stage_graph(graph, stage: int, cfg: float):
    out = graph.out
    p = add_dla_pipeline(graph)
    refs = graph.add(
        "DLAReferenceLatents",
        conditioning=out(p.positive),
        vae=out(p.vae),
        vae_resolution=64,
        reference_latents_method="flux_kontext (offset)",
        vae_resolutions="",
        image1=out(p.image),
    )
    zero_text = graph.add("ConditioningZeroOut", conditioning=out(refs))
    negative_plain = graph.add("ConditioningZeroOut", conditioning=out(p.positive))
    positives = {1: p.positive, 2: refs, 3: zero_text}
    negatives = {1: negative_plain, 2: zero_text, 3: zero_text}
    tau1, tau2 = TAUS_FOR_STAGE[stage]
    common = dict(
        model=out(p.model),
        latent_image=out(p.latent),
        seed=SEED,
        steps=STEPS,
        cfg=cfg,
        sampler_name="euler",
        scheduler="simple",
        denoise=DENOISE,
    )
    staged = graph.add(
        "DLAStagedKSamplerAdvanced",
        positive_stage1=out(positives[1]),
        positive_stage2=out(positives[2]),
        positive_stage3=out(positives[3]),
        negative_stage1=out(negatives[1]),
        negative_stage2=out(negatives[2]),
        negative_stage3=out(negatives[3]),
        tau1=tau1,
        tau2=tau2,
        **common,
    )
    native = graph.add("KSampler", positive=out(positives[stage]), negative=out(negatives[stage]), **common)
    for sampler in (staged, native):
        decoded = graph.add("VAEDecode", samples=out(sampler), vae=out(p.vae))
        graph.add("PreviewImage", images=out(decoded))
    return staged, native


@pytest.mark.parametrize("stage,cfg", [(1, 1.0), (2, 2.0), (3, 1.0)])
def test_one_stage_schedule_is_bit_identical_to_native_ksampler(comfy, graph, stage, cfg):
    staged, native = _stage_graph(graph, stage, cfg)
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    staged_latent = comfy.output(staged)["samples"]
    native_latent = comfy.output(native)["samples"]
    assert torch.equal(staged_latent, native_latent)


def test_stages_differ_so_the_equality_above_is_not_vacuous(comfy, graph):
    first_staged, _ = _stage_graph(graph, 1, 1.0)
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    stage1 = comfy.output(first_staged)["samples"].clone()
    other = Graph()
    third_staged, _ = _stage_graph(other, 3, 1.0)
    result = comfy.run(other.prompt)
    assert result.success, result.error_text
    assert not torch.equal(stage1, comfy.output(third_staged)["samples"])


def test_tau2_above_tau1_is_a_node_error(comfy, graph):
    staged, _ = _stage_graph(graph, 1, 1.0)
    graph.prompt[staged]["inputs"].update(tau1=0.5, tau2=0.9)
    result = comfy.run(graph.prompt)
    # ComfyUI still runs the graph's other (valid) outputs; the staged sampler is reported as a node error.
    assert staged in result.node_errors
    assert "tau2" in json.dumps(result.node_errors[staged])


# -- DLAReferenceLatents: any number of references, a VAE resolution each, the method per model ------
def _reference_node():
    return pack_module("nodes.qwen_identity").DLAReferenceLatents


@pytest.fixture(scope="module")
def tiny_vae(comfy, tiny_names):
    import nodes as comfy_nodes

    return comfy_nodes.VAELoader().load_vae(tiny_names.vae)[0]


def _frames(count: int, width: int = 48, height: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(count)
    return torch.rand(count, height, width, 3, generator=generator)  # [batch, H, W, C]


def _empty_conditioning() -> list:
    return [[torch.zeros(1, 4, 4096), {"pooled_output": torch.zeros(1, 768)}]]


def test_five_references_each_get_a_latent_at_their_own_vae_resolution(tiny_vae):
    node = _reference_node()
    # image1 holds 3 frames, image2 2 more: five references, more than the native node's three.
    out = node.execute(
        _empty_conditioning(),
        tiny_vae,
        64,
        "flux_kontext (offset)",
        "64, 64, 64, 128",
        image1=_frames(3),
        image2=_frames(2),
    ).result[0]
    latents = out[0][1]["reference_latents"]
    assert len(latents) == 5
    # 48x32 scaled to ~side^2 pixels (sides multiple of 8), /8 by the VAE
    assert [tuple(latent.shape[-2:]) for latent in latents] == [(7, 10)] * 3 + [(13, 20)] * 2
    assert out[0][1]["reference_latents_method"] == "offset"


def test_reference_latents_equal_the_vae_encoding_of_the_resized_reference(tiny_vae):
    import comfy.utils

    frame = _frames(1, 64, 64)
    out = _reference_node().execute(_empty_conditioning(), tiny_vae, 64, "index", image1=frame).result[0]
    expected = tiny_vae.encode(
        comfy.utils.common_upscale(frame.movedim(-1, 1), 64, 64, "area", "disabled").movedim(1, -1)
    )
    assert torch.equal(out[0][1]["reference_latents"][0], expected)
    assert out[0][1]["reference_latents_method"] == "index"


def test_references_are_appended_to_latents_already_on_the_conditioning(tiny_vae):
    node = _reference_node()
    once = node.execute(_empty_conditioning(), tiny_vae, 64, "leave unset", image1=_frames(1)).result[0]
    twice = node.execute(once, tiny_vae, 64, "leave unset", image1=_frames(2)).result[0]
    assert len(twice[0][1]["reference_latents"]) == 3
    assert "reference_latents_method" not in twice[0][1]


def test_no_reference_image_is_a_clear_error(tiny_vae):
    error = pack_module("dla_core.errors").DLAInputError
    with pytest.raises(error, match="at least one reference image"):
        _reference_node().execute(_empty_conditioning(), tiny_vae, 64, "index")


def test_a_bad_per_reference_resolution_list_is_a_clear_error(tiny_vae):
    error = pack_module("dla_core.errors").DLAInputError
    with pytest.raises(error, match="vae_resolutions"):
        _reference_node().execute(_empty_conditioning(), tiny_vae, 64, "index", "64, big", image1=_frames(2))
