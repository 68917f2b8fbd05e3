"""reference_strength probed per model call on tiny models in a real ComfyUI.

A reference's strength ``s`` is an additive bias ``log(s)`` on its key positions in every joint-attention
layer, through ComfyUI's attention patch point (``set_model_attn1_patch``). The probes here:

* strength 1 everywhere is bit-identical to ComfyUI's native sampler;
* strength 0 for a reference gives, at every call and in every attention layer, the outputs of the same
  conditioning without that reference (float tolerance; the reference's own tokens aside);
* between them the attention mass on the reference's keys falls monotonically with the strength (one layer,
  measured through ComfyUI's ``optimized_attention_override``);
* a ramp gives the scheduled value at each call, and strengths combine with ``reference_timing`` and the stages;
* ComfyUI's ``FluxKVCache`` and a strength work together (the bias lands on the cached keys);
* bad input is one clear node error and the server keeps serving.

FLUX.1 Kontext, FLUX.2 [dev] and [klein] take strengths on ComfyUI 0.33.0. ComfyUI 0.3.64's FLUX blocks run
no attention patches and its Qwen-Image (like 0.33.0's) ignores a patch's mask: there the node says what it
needs. Also here: the stage edge at t = 1 (tau1 = 1 keeps the first call in stage 1, without references).
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from dla_harness import add_dla_pipeline, pack_module

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 5
STEPS = 4
FAMILIES = ("flux2_dev", "flux2_klein", "flux_kontext", "krea2")


def _random(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.5


def comfy_runs_flux_attention_patches() -> bool:
    """Whether this ComfyUI's FLUX blocks run attn1 patches (0.33.0 yes, 0.3.64 no)."""
    import comfy.ldm.flux.layers

    return "attn1_patch" in inspect.getsource(comfy.ldm.flux.layers.DoubleStreamBlock.forward)


@pytest.fixture(scope="module")
def family_models(comfy, tiny_models_dir, tiny_names, tmp_path_factory):
    """family -> (ModelPatcher, text conditioning, latent, [reference A, reference B]); A and B differ in size."""
    import comfy.model_management
    import comfy.sd
    from tiny_flux2 import build_tiny_flux2, comfy_has_flux2

    from dla_tiny.cache import cached_build
    from dla_tiny.krea2 import DIT_TXT_LAYERS, STAGING_TXT_WIDTH, build_tiny_krea2_dit, comfy_has_krea2
    from dla_tiny.qwen_image import build_tiny_qwen_image_dit

    root = tmp_path_factory.mktemp("strength-models")
    out = {}
    if comfy_has_flux2():
        for name, guidance, seed in (("flux2_dev", True, 0), ("flux2_klein", False, 1)):
            path = cached_build(build_tiny_flux2, root, seed=seed, guidance=guidance)
            values = {"guidance": 4.0} if guidance else {}
            out[name] = (
                comfy.sd.load_diffusion_model(str(path)),
                [[_random(1, 5, 96, seed=seed + 10), values]],
                {"samples": torch.zeros(1, 128, 4, 4)},
                [_random(1, 128, 4, 4, seed=20), _random(1, 128, 2, 6, seed=21)],
            )
    out["flux_kontext"] = (
        comfy.sd.load_diffusion_model(str(tiny_models_dir / "diffusion_models" / tiny_names.flux)),
        [[_random(1, 4, 4096, seed=13), {"pooled_output": _random(1, 768, seed=14), "guidance": 2.5}]],
        {"samples": torch.zeros(1, 16, 8, 8)},
        [_random(1, 16, 8, 8, seed=24), _random(1, 16, 4, 12, seed=25)],
    )
    if comfy_has_krea2():  # Krea 2 reads references only with an index method (no default of its own)
        path = cached_build(build_tiny_krea2_dit, root, seed=0)
        out["krea2"] = (
            comfy.sd.load_diffusion_model(str(path)),
            [[_random(1, 5, DIT_TXT_LAYERS * STAGING_TXT_WIDTH, seed=16), {"reference_latents_method": "index"}]],
            {"samples": torch.zeros(1, 16, 1, 8, 8)},
            [_random(1, 16, 1, 8, 8, seed=28), _random(1, 16, 1, 4, 12, seed=29)],
        )
    qwen = cached_build(build_tiny_qwen_image_dit, root, seed=0)
    out["qwen_image_edit"] = (
        comfy.sd.load_diffusion_model(str(qwen)),
        [[_random(1, 6, 3584, seed=15), {}]],
        {"samples": torch.zeros(1, 16, 1, 8, 8)},
        [_random(1, 16, 1, 8, 8, seed=26), _random(1, 16, 1, 4, 12, seed=27)],
    )
    yield out
    comfy.model_management.unload_all_models()


def _weighable(family_models, family: str):
    """The family's models where this ComfyUI can weigh their references, else None (the other tests cover why).

    None on ComfyUI 0.3.64: no FLUX.2 and no Krea 2 (test_multi_reference_staging and test_krea2_staging check
    the notices), and FLUX.1 Kontext's blocks run no attention patches (tested below).
    """
    if family not in family_models or (family != "krea2" and not comfy_runs_flux_attention_patches()):
        return None
    return family_models[family]


def with_references(conditioning: list, references: list) -> list:
    import node_helpers

    return node_helpers.conditioning_set_values(conditioning, {"reference_latents": list(references)}, append=True)


def _staged(model, positive_stage1, latent, *, strength: str = "", timing: str = "", tau1=0.0, tau2=0.0, **stages):
    node = pack_module("nodes.staged_advanced").DLAStagedKSamplerAdvanced
    common = dict(seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0)
    result = node.execute(
        model,
        positive_stage1,
        latent,
        tau1=tau1,
        tau2=tau2,
        reference_timing=timing,
        reference_strength=strength,
        **stages,
        **common,
    )
    return result.result[0]["samples"]


def _native(model, positive, latent) -> torch.Tensor:
    import nodes as comfy_nodes

    negative = [[torch.zeros_like(positive[0][0]), dict(positive[0][1])]]  # never evaluated at cfg 1
    return comfy_nodes.common_ksampler(
        model, SEED, STEPS, 1.0, "euler", "simple", positive, negative, latent, denoise=1.0
    )[0]["samples"]


def _call_times(model) -> list[float]:
    import comfy.samplers

    staged = pack_module("nodes.staged_guider")
    model_sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, "simple", STEPS)
    return [staged.normalised_time(model_sampling, s) for s in sigmas[:-1]]


class OutputProbe:
    """Records every model call's output and every attention layer's output (all tokens: text, image, references)."""

    def __init__(self, model):
        self.model_outputs: list[torch.Tensor] = []
        self.attention_outputs: list[torch.Tensor] = []
        self.model = model.clone()
        self.model.set_model_unet_function_wrapper(self._wrap)
        self.model.set_model_attn1_output_patch(self._attention_output)

    def _wrap(self, apply_model, args):
        out = apply_model(args["input"], args["timestep"], **args["c"])
        self.model_outputs.append(out.clone())
        return out

    def _attention_output(self, attn, extra_options):
        self.attention_outputs.append(attn.clone())  # [batch, tokens, width]
        return attn


class AttentionProbe:
    """Through ComfyUI's ``optimized_attention_override``: per call, the first joint layer's bias on each
    reference's keys and the attention mass (mean over heads and text/image queries) on the last reference.

    The first joint layer: FLUX's double block 0; Krea 2 (single-stream only) its block 0."""

    def __init__(self, model):
        module = type(model.get_model_object("diffusion_model")).__module__
        self.first_layer = ("single" if module.startswith("comfy.ldm.krea2") else "double", 0)
        self.mass: list[float] = []
        self.query_mass: list[torch.Tensor] = []  # per call: [batch, heads, queries] mass on the last reference
        self.bias: list[list[float]] = []  # per call: the bias on the first key of each reference
        self.model = model.clone()
        self.model.model_options["transformer_options"]["optimized_attention_override"] = self

    def __call__(self, func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        if (options.get("block_type"), options.get("block_index")) == self.first_layer:
            q, k = args[0].float(), args[1].float()  # [batch, heads, tokens, head width] (skip_reshape)
            counts = options.get("reference_image_num_tokens") or []
            mask = kwargs.get("mask")
            logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            if mask is not None:
                logits = logits + mask.float()
            weights = torch.softmax(logits, dim=-1)
            total = sum(counts)
            queries = slice(0, q.shape[2] - total)  # text and image queries, not the references' own
            last = weights[:, :, queries, k.shape[2] - counts[-1] :] if counts else weights[..., :0]
            self.query_mass.append(last.sum(-1))
            self.mass.append(float(last.sum(-1).mean()))
            starts, position = [], k.shape[2] - total
            for count in counts:
                starts.append(0.0 if mask is None else float(mask.flatten(0, -2)[0, position]))
                position += count
            self.bias.append(starts)
        return func(*args, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_strength_one_everywhere_is_bit_identical_to_native(family_models, family):
    model, text, latent, references = family_models.get(family) or (None,) * 4
    if model is None:
        return  # FLUX.2 on a ComfyUI without it: test_multi_reference_staging checks the notice
    conditioning = with_references(text, references)
    native = _native(model, conditioning, latent)
    assert torch.equal(_staged(model, conditioning, latent, strength="1, 1.0"), native)
    assert torch.equal(_staged(model, conditioning, latent, strength="0.9-0.5:1>1"), native)
    assert torch.equal(_staged(model, conditioning, latent), native)


@pytest.mark.parametrize("family", FAMILIES)
def test_strength_zero_removes_the_reference_from_every_call_and_layer(family_models, family):
    found = _weighable(family_models, family)
    if found is None:
        return
    model, text, latent, references = found
    first, second = references
    # A + B with B at strength 0 against A alone; B's own tokens (the trailing ones) are left out of the comparison
    weighted = OutputProbe(model)
    weighted_samples = _staged(weighted.model, with_references(text, references), latent, strength="1, 0")
    alone = OutputProbe(model)
    alone_samples = _staged(alone.model, with_references(text, [first]), latent)
    assert len(weighted.model_outputs) == len(alone.model_outputs) == STEPS
    for ours, theirs in zip(weighted.model_outputs, alone.model_outputs):
        assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4)
    assert len(weighted.attention_outputs) == len(alone.attention_outputs) >= STEPS  # every layer of every call
    tokens_second = _tokens_of(model, second)
    for ours, theirs in zip(weighted.attention_outputs, alone.attention_outputs):
        # ours holds A's and B's tokens at the end; B's own outputs (the last tokens) are left out
        assert ours.shape[1] == theirs.shape[1] + tokens_second
        assert torch.allclose(ours[:, : theirs.shape[1]], theirs, atol=1e-5, rtol=1e-4)
    assert torch.allclose(weighted_samples, alone_samples, atol=1e-5, rtol=1e-4)
    with_b = _staged(model, with_references(text, references), latent)
    assert not torch.allclose(with_b, alone_samples, atol=1e-3)  # B matters, so the closeness above is not vacuous


def _tokens_of(model, reference: torch.Tensor) -> int:
    """Tokens a reference latent becomes in the DiT (2x2 patches)."""
    diffusion_model = model.get_model_object("diffusion_model")
    patch = getattr(diffusion_model, "patch_size", None) or diffusion_model.patch
    return math.ceil(reference.shape[-2] / patch) * math.ceil(reference.shape[-1] / patch)


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_mass_on_a_reference_falls_monotonically_with_its_strength(family_models, family):
    found = _weighable(family_models, family)
    if found is None:
        return
    model, text, latent, references = found
    conditioning = with_references(text, references)
    masses, native = [], None
    for strength in (1.0, 0.75, 0.5, 0.25, 0.1, 0.0):
        probe = AttentionProbe(model)
        _staged(probe.model, conditioning, latent, strength=f"1, {strength}")
        masses.append(probe.mass[0])  # the first call: the same noise and inputs for every strength
        if strength == 1.0:
            native = probe.query_mass[0]
        else:
            assert probe.bias[0] == pytest.approx([0.0, math.log(strength) if strength else -math.inf], abs=1e-6)
            # each query's weights are its native ones scaled by s on B's keys and renormalised
            expected = strength * native / (strength * native + 1 - native)
            assert torch.allclose(probe.query_mass[0], expected, atol=1e-6, rtol=1e-4)
    assert all(high > low for high, low in zip(masses, masses[1:])), masses
    assert masses[-1] == 0.0 and masses[0] > 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_a_ramp_gives_the_scheduled_strength_at_each_call(family_models, family):
    found = _weighable(family_models, family)
    if found is None:
        return
    model, text, latent, references = found
    library = pack_module("nodes.staged_guider")
    times = _call_times(model)
    # call 0 before the ramp, calls 1 and 2 inside it, call 3 after it
    text_ramp = f"{(times[0] + times[1]) / 2:.6f}-{(times[2] + times[3]) / 2:.6f}:1>0.2"
    ramp = pack_module("dla_core.schedule.strength").parse_reference_strength(text_ramp)[0]
    probe = AttentionProbe(model)
    with library.record_model_calls() as calls:
        _staged(probe.model, with_references(text, references), latent, strength=text_ramp)
    expected = [ramp.at(call.t) for call in calls]
    assert [call.strengths for call in calls] == [(value, 1.0) for value in expected]
    assert expected[0] == 1.0 and expected[-1] == 0.2 and 1.0 > expected[1] > expected[2] > 0.2
    assert [bias[0] for bias in probe.bias] == pytest.approx([math.log(value) for value in expected], abs=1e-6)
    assert [bias[1] for bias in probe.bias] == [0.0] * STEPS


@pytest.mark.parametrize("family", FAMILIES)
def test_strengths_combine_with_reference_timing_and_the_stages(family_models, family):
    found = _weighable(family_models, family)
    if found is None:
        return
    model, text, latent, references = found
    times = _call_times(model)
    mid = [(a + b) / 2 for a, b in zip(times, times[1:])]
    library = pack_module("nodes.staged_guider")
    probe = AttentionProbe(model)
    both = with_references(text, references)
    # call 0: stage 1, text only; call 1: only B (A joins at call 2); calls 2, 3: both
    with library.record_model_calls() as calls:
        _staged(
            probe.model, text, latent, strength="0.5, 0.25", timing=f"{mid[1]:.6f}-0", tau1=mid[0], positive_stage2=both
        )
    assert [call.stage for call in calls] == [1, 2, 2, 2]
    assert [call.strengths for call in calls] == [(), (0.25,), (0.5, 0.25), (0.5, 0.25)]
    assert probe.bias == [
        [],
        pytest.approx([math.log(0.25)]),
        pytest.approx([math.log(0.5), math.log(0.25)]),
        pytest.approx([math.log(0.5), math.log(0.25)]),
    ]


def test_flux_kv_cache_and_a_strength_work_together(comfy, family_models):
    """The strength patch runs after FluxKVCache's: its bias lands on the cached reference keys too."""
    import nodes as comfy_nodes

    found = _weighable(family_models, "flux_kontext")
    kv_node = comfy_nodes.NODE_CLASS_MAPPINGS.get("FluxKVCache")
    if found is None or kv_node is None:
        return
    import node_helpers

    model, text, latent, references = found
    # the method ComfyUI's own KV-cache use takes (as in test_flux_kv_cache)
    method = {"reference_latents_method": "index"}
    conditioning = node_helpers.conditioning_set_values(with_references(text, references[:1]), method)

    def cached_run(strength: str) -> torch.Tensor:  # a fresh cache per run
        return _staged(kv_node.execute(model).result[0], conditioning, latent, strength=strength)

    # one stage with references (tau 0/0), so the cache is consistent; strength 0 = the reference removed, at the
    # first call (keys computed) and at every later one (keys from the cache)
    assert torch.allclose(cached_run("0"), _native(model, text, latent), atol=1e-5, rtol=1e-4)
    half, full = cached_run("0.5"), cached_run("")
    assert torch.isfinite(half).all() and not torch.allclose(half, full, atol=1e-4)


def test_on_a_comfyui_without_the_patch_point_the_node_says_what_it_needs(family_models):
    """ComfyUI 0.3.64: FLUX's blocks run no attention patches, so a strength is refused, never ignored."""
    if comfy_runs_flux_attention_patches():
        return  # the current row: the tests above weigh the references
    model, text, latent, references = family_models["flux_kontext"]
    error = pack_module("dla_core.errors").DLAInputError
    conditioning = with_references(text, references)
    with pytest.raises(error, match=r"set_model_attn1_patch.*ComfyUI 0\.33\.0 has them.*0\.3\.64 has no such point"):
        _staged(model, conditioning, latent, strength="1, 0.5")
    assert torch.equal(_staged(model, conditioning, latent, strength="1, 1"), _native(model, conditioning, latent))


def test_qwen_image_edit_refuses_a_strength_with_what_it_needs(family_models):
    """Qwen-Image's attention builds its mask before attention patches run: a strength is refused before sampling."""
    model, text, latent, references = family_models["qwen_image_edit"]
    error = pack_module("dla_core.errors").DLAInputError
    conditioning = with_references(text, references)
    with pytest.raises(error, match=r"cannot weigh Qwen-Image-Edit's references.*FLUX\.1 Kontext, FLUX\.2"):
        _staged(model, conditioning, latent, strength="0.5")
    assert torch.equal(_staged(model, conditioning, latent, strength="1"), _native(model, conditioning, latent))


def test_more_strengths_than_references_is_one_clear_error(family_models):
    model, text, latent, references = family_models["flux_kontext"]
    error = pack_module("dla_core.errors").DLAInputError
    if not comfy_runs_flux_attention_patches():
        return
    with pytest.raises(error, match=r"reference_strength gives 3 values .* holds 2 reference"):
        _staged(model, with_references(text, references), latent, strength="1, 0.5, 0.5")


@pytest.mark.parametrize(
    "strength,words",
    [
        ("-0.5", "has the strength -0.5, outside [0, 1]"),
        ("nan", "non-finite strength"),
        ("0.95-0.5:1.2>0.3", "has the strength 1.2, outside [0, 1]"),
        ("1.5-0.5:1>0.3", "ramp whose times leave [0, 1]"),
    ],
)
def test_bad_strengths_are_one_clear_node_error_and_the_server_keeps_serving(comfy, graph, strength, words):
    nodes = add_dla_pipeline(graph)
    refs = graph.add(
        "DLAReferenceLatents",
        conditioning=graph.out(nodes.positive),
        vae=graph.out(nodes.vae),
        vae_resolution=64,
        reference_latents_method="flux_kontext (offset)",
        vae_resolutions="",
        image1=graph.out(nodes.image),
    )
    sampler = graph.add(
        "DLAStagedKSamplerAdvanced",
        model=graph.out(nodes.model),
        positive_stage1=graph.out(nodes.positive),
        positive_stage2=graph.out(refs),
        latent_image=graph.out(nodes.latent),
        seed=1,
        steps=2,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
        denoise=1.0,
        tau1=0.95,
        tau2=0.0,
        reference_strength=strength,
    )
    graph.add("PreviewImage", images=[graph.add("VAEDecode", samples=graph.out(sampler), vae=graph.out(nodes.vae)), 0])
    bad = comfy.run(graph.prompt)
    assert not bad.success
    assert words in bad.error_text and "reference_strength" in bad.error_text
    graph.prompt[sampler]["inputs"]["reference_strength"] = "1"
    good = comfy.run(graph.prompt)
    assert good.success, good.error_text


def test_tau1_one_keeps_the_call_at_t_1_in_stage_1_and_stage_1_references_reach_it(family_models):
    """The stage edge at t = 1: ``t >= tau1`` holds at t = 1 for tau1 = 1, so the first call of a run from pure
    noise is stage 1 (no references unless stage 1's conditioning carries them); every later call is stage 2.
    References from the first call: give them to stage 1 (or set tau1 = tau2 = 0 with them in stage 1)."""
    model, text, latent, references = family_models["flux_kontext"]
    library = pack_module("nodes.staged_guider")
    both = with_references(text, references)
    times = _call_times(model)
    assert times[0] == 1.0
    with library.record_model_calls() as calls:
        late = _staged(model, text, latent, tau1=1.0, tau2=0.0, positive_stage2=both)
    assert [call.stage for call in calls] == [1] + [2] * (STEPS - 1)
    assert calls[0].t == 1.0 and calls[0].references == ()
    assert not torch.equal(late, _native(model, both, latent))  # the first call had no references
    with library.record_model_calls() as calls:
        early = _staged(model, both, latent, tau1=1.0, tau2=0.0, positive_stage2=both)
    assert calls[0].stage == 1 and calls[0].references == (True, True)
    assert torch.equal(early, _native(model, both, latent))
