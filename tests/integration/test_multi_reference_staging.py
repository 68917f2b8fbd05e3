"""Staged references and per-reference timing on today's multi-reference models, probed per model call.

FLUX.2 [dev] (guidance), FLUX.2 [klein] (no guidance) and Qwen-Image-Edit-2511 feed their
reference latents at every step. With ``DLAStagedKSamplerAdvanced`` the paper's staging applies
to them without training (stage 1 text only, stages 2-3 text + references), and a
``reference_timing`` gives each reference its own active range of t. A probe wrapped around the
model records, for every model call, which reference latents reach the DiT (identified by their
distinct sizes). Where the active set never changes, sampling must equal ComfyUI's KSampler on the
conditioning with exactly those references, bit for bit.

ComfyUI 0.3.64 has no FLUX.2: there the FLUX.2 cases check the pack's one-line notice, and the
same probes run on FLUX.1 Kontext and Qwen-Image-Edit-2509 (``index``).
"""

from __future__ import annotations

import pytest
import torch
from dla_harness import add_dla_pipeline, pack_module

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 11
STEPS = 5
FLUX2_FAMILIES = ("flux2_dev", "flux2_klein", "qwen_image_edit_2511")
OLD_FAMILIES = ("flux_kontext", "qwen_image_edit_2509")


def _random(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.5


@pytest.fixture(scope="module")
def family_models(comfy, tiny_models_dir, tiny_names, tmp_path_factory):
    """family -> (ModelPatcher, text conditioning, latent, [reference A, reference B]); A and B differ in size."""
    import comfy.model_management
    import comfy.sd
    from tiny_flux2 import build_tiny_flux2, comfy_has_flux2

    from dla_tiny.cache import cached_build
    from dla_tiny.qwen_image import build_tiny_qwen_image_dit

    root = tmp_path_factory.mktemp("multi-ref-models")
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
        qwen_2511 = cached_build(build_tiny_qwen_image_dit, root, seed=0, index_timestep_zero=True)
        out["qwen_image_edit_2511"] = (
            comfy.sd.load_diffusion_model(str(qwen_2511)),
            [[_random(1, 6, 3584, seed=12), {}]],
            {"samples": torch.zeros(1, 16, 1, 8, 8)},
            [_random(1, 16, 1, 8, 8, seed=22), _random(1, 16, 1, 4, 12, seed=23)],
        )
    out["flux_kontext"] = (
        comfy.sd.load_diffusion_model(str(tiny_models_dir / "diffusion_models" / tiny_names.flux)),
        [[_random(1, 4, 4096, seed=13), {"pooled_output": _random(1, 768, seed=14), "guidance": 2.5}]],
        {"samples": torch.zeros(1, 16, 8, 8)},
        [_random(1, 16, 8, 8, seed=24), _random(1, 16, 4, 12, seed=25)],
    )
    qwen_2509 = cached_build(build_tiny_qwen_image_dit, root, seed=0)
    out["qwen_image_edit_2509"] = (
        comfy.sd.load_diffusion_model(str(qwen_2509)),
        [[_random(1, 6, 3584, seed=15), {}]],
        {"samples": torch.zeros(1, 16, 1, 8, 8)},
        [_random(1, 16, 1, 8, 8, seed=26), _random(1, 16, 1, 4, 12, seed=27)],
    )
    yield out
    comfy.model_management.unload_all_models()


def _family(family_models, family: str):
    """The family's models, or None after checking the one-line notice where this ComfyUI lacks FLUX.2."""
    from tiny_flux2 import comfy_has_flux2

    if family in FLUX2_FAMILIES and not comfy_has_flux2():
        message = pack_module("nodes.compat").flux2_missing_message()
        assert "has no FLUX.2" in message and "0.3.72" in message and "Qwen-Image-Edit staging work" in message
        return None
    return family_models[family]


def with_references(conditioning: list, references: list) -> list:
    import node_helpers

    return node_helpers.conditioning_set_values(conditioning, {"reference_latents": list(references)}, append=True)


class Probe:
    """Wraps the model: records (t, sizes of the reference latents that reach the DiT) per model call."""

    def __init__(self, model):
        self.calls: list[tuple[float, list[tuple[int, ...]]]] = []
        self.model = model.clone()
        self.model.set_model_unet_function_wrapper(self)

    def __call__(self, apply_model, args):
        references = args["c"].get("ref_latents") or []
        self.calls.append((float(args["timestep"].flatten()[0]), [tuple(r.shape[-2:]) for r in references]))
        return apply_model(args["input"], args["timestep"], **args["c"])


def _call_times(model) -> list[float]:
    """Normalised time of every model call of an Euler run of STEPS steps (denoise 1)."""
    import comfy.samplers

    staged = pack_module("nodes.staged_guider")
    model_sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, "simple", STEPS)
    return [staged.normalised_time(model_sampling, s) for s in sigmas[:-1]]


def _mid(a: float, b: float) -> float:
    return (a + b) / 2


def _run_guider(model, positives: dict, timing: str, tau1: float, tau2: float, latent: dict):
    """(the guider's model calls, the sampled latent) of an Euler run with one conditioning per stage."""
    library = pack_module("nodes.staged_guider")
    guider = pack_module("nodes.staged_advanced").staged_guider_advanced(
        model, cfg=1.0, tau1=tau1, tau2=tau2, positives=positives, negatives={}, reference_timing=timing
    )
    settings = library.KSamplerSettings(seed=SEED, steps=STEPS, sampler_name="euler", scheduler="simple", denoise=1.0)
    with library.record_model_calls() as calls:
        samples = library.ksample_with_guider(guider, model, latent, settings)
    return calls, samples["samples"]


@pytest.mark.parametrize("family", FLUX2_FAMILIES + OLD_FAMILIES)
def test_stage_1_sends_no_references_and_stages_2_3_send_them_all(family_models, family):
    found = _family(family_models, family)
    if found is None:
        return
    model, text, latent, references = found
    times = _call_times(model)
    tau1, tau2 = _mid(times[0], times[1]), _mid(times[2], times[3])  # calls 0 | 1, 2 | 3, 4
    probe = Probe(model)
    positives = {1: text, 2: with_references(text, references), 3: with_references(text, references)}
    calls, samples = _run_guider(probe.model, positives, "", tau1, tau2, latent)
    sizes = [tuple(r.shape[-2:]) for r in references]
    assert [call.stage for call in calls] == [1, 2, 2, 3, 3]
    assert [refs for _, refs in probe.calls] == [[], sizes, sizes, sizes, sizes]
    assert torch.isfinite(samples).all()


@pytest.mark.parametrize("family", FLUX2_FAMILIES + OLD_FAMILIES)
def test_each_reference_reaches_the_model_exactly_in_its_own_range(family_models, family):
    found = _family(family_models, family)
    if found is None:
        return
    model, text, latent, references = found
    times = _call_times(model)
    size_a, size_b = (tuple(r.shape[-2:]) for r in references)
    # A from call 2 on (a subject photo once the layout is set); B until call 3 (a pose/style reference early).
    timing = f"{_mid(times[1], times[2]):.6f}-0, 1-{_mid(times[3], times[4]):.6f}"
    probe = Probe(model)
    conditioning = with_references(text, references)
    # Stage 1 (call 0) is text only; the timing works inside the stages' references.
    calls, _ = _run_guider(probe.model, {1: text, 2: conditioning}, timing, _mid(times[0], times[1]), 0.0, latent)
    expected = [[], [size_b], [size_a, size_b], [size_a, size_b], [size_a]]
    assert [refs for _, refs in probe.calls] == expected
    assert [call.references for call in calls][1:] == [(False, True), (True, True), (True, True), (True, False)]


@pytest.mark.parametrize("family", FLUX2_FAMILIES + OLD_FAMILIES)
def test_a_timing_whose_active_set_never_changes_is_bit_identical_to_native(family_models, family):
    import nodes as comfy_nodes

    found = _family(family_models, family)
    if found is None:
        return
    model, text, latent, references = found
    times = _call_times(model)
    both = with_references(text, references)
    only_a = with_references(text, references[:1])
    negative = [[torch.zeros_like(text[0][0]), dict(text[0][1])]]  # never evaluated at cfg 1
    node = pack_module("nodes.staged_advanced").DLAStagedKSamplerAdvanced
    common = dict(seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0)

    def staged(timing: str) -> torch.Tensor:
        return node.execute(model, both, latent, tau1=0.0, tau2=0.0, reference_timing=timing, **common).result[0][
            "samples"
        ]

    def native(positive) -> torch.Tensor:
        return comfy_nodes.common_ksampler(
            model, SEED, STEPS, 1.0, "euler", "simple", positive, negative, latent, denoise=1.0
        )[0]["samples"]

    with_both, with_a = native(both), native(only_a)
    assert not torch.equal(with_both, with_a)  # the references matter, so the equalities below are not vacuous
    assert torch.equal(staged(""), with_both)
    assert torch.equal(staged(f"1-0, 1-{times[-1] / 2:.6f}"), with_both)  # B's range covers every call
    assert torch.equal(staged(f"1-0, {times[-1] / 2:.6f}-0"), with_a)  # B's range holds no call
    assert not torch.equal(staged(f"1-0, {_mid(times[1], times[2]):.6f}-0"), with_a)  # B joins mid-run


@pytest.mark.parametrize(
    "timing,words",
    [
        ("0-0.95", "out of order"),
        ("1.5-0", "leaves [0, 1]"),
        ("0.9", "is not a range"),
        ("1-0, 1-0, 1-0", "3 ranges"),
    ],
)
def test_bad_timings_are_one_clear_node_error_and_the_server_keeps_serving(comfy, graph, timing, words):
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
        reference_timing=timing,
    )
    graph.add("PreviewImage", images=[graph.add("VAEDecode", samples=graph.out(sampler), vae=graph.out(nodes.vae)), 0])
    bad = comfy.run(graph.prompt)
    assert not bad.success
    assert words in bad.error_text and "reference_timing" in bad.error_text
    graph.prompt[sampler]["inputs"]["reference_timing"] = "0.9-0"
    good = comfy.run(graph.prompt)
    assert good.success, good.error_text


@pytest.mark.parametrize("family", FLUX2_FAMILIES + OLD_FAMILIES)
def test_the_staged_guider_with_flux2_sigmas_equals_the_staged_ksampler_and_native_per_stage(family_models, family):
    """DLAStagedGuiderAdvanced + SamplerCustomAdvanced (FLUX.2's own Flux2Scheduler where it exists).

    One-stage schedules equal ComfyUI's CFGGuider on that stage's conditioning, bit for bit; the
    mixed schedule sends no references at t >= tau1.
    """
    import comfy.sample
    import comfy.samplers

    found = _family(family_models, family)
    if found is None:
        return
    model, text, latent, references = found
    advanced = pack_module("nodes.staged_advanced")
    sigmas = _sigmas_for(model, family)
    sampler = comfy.samplers.sampler_object("euler")
    conditioning = with_references(text, references)

    def run(guider, sigmas=sigmas) -> torch.Tensor:
        """What SamplerCustomAdvanced does with a guider (its node API differs between ComfyUI versions)."""
        noise = comfy.sample.prepare_noise(latent["samples"], SEED)
        return guider.sample(noise, latent["samples"], sampler, sigmas, seed=SEED)

    def native_guider(positive):
        guider = comfy.samplers.CFGGuider(model)  # what ComfyUI's CFGGuider node builds
        guider.set_conds(positive, positive)
        guider.set_cfg(1.0)
        return guider

    # all calls in stage 1 (tau 0/0); all in stage 2 (tau1 = 1 with the schedule started below t = 1)
    for tau1, tau2, stage_positive, stage_sigmas in ((0.0, 0.0, text, sigmas), (1.0, 0.0, conditioning, sigmas[1:])):
        staged = advanced.DLAStagedGuiderAdvanced.execute(model, text, 1.0, tau1, tau2, positive_stage2=conditioning)
        assert torch.equal(run(staged.result[0], stage_sigmas), run(native_guider(stage_positive), stage_sigmas))
    probe = Probe(model)
    guider = advanced.DLAStagedGuiderAdvanced.execute(
        probe.model, text, 1.0, 0.95, 0.0, positive_stage2=conditioning
    ).result[0]
    run(guider)
    sizes = [tuple(r.shape[-2:]) for r in references]
    scale = _time_scale(model)
    expected = [[] if t / scale >= 0.95 else sizes for t, _ in probe.calls]
    assert [refs for _, refs in probe.calls] == expected
    assert expected[0] == [] and expected[-1] == sizes  # both stages were visited


def _time_scale(model) -> float:
    """The model's timestep at t = 1 (FLUX: 1; Qwen-Image: 1; the probe reads raw timesteps)."""
    model_sampling = model.get_model_object("model_sampling")
    return float(model_sampling.timestep(model_sampling.sigma_max))


def _sigmas_for(model, family: str) -> torch.Tensor:
    """FLUX.2's own Flux2Scheduler sigmas for the FLUX.2 families, else the model's 'simple' schedule."""
    import comfy.samplers

    if family.startswith("flux2"):
        from comfy_extras.nodes_flux import Flux2Scheduler

        return Flux2Scheduler.execute(STEPS, 64, 64).result[0]
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)


def test_a_conditioning_for_another_model_is_one_clear_error_before_sampling(family_models):
    """FLUX.2-wide tokens on FLUX.1 (Kontext): named stage, both widths, the fix; not a matmul error mid-run."""
    model, text, latent, _ = family_models["flux_kontext"]
    wrong = [[_random(1, 5, 96, seed=30), {"guidance": 4.0}]]
    node = pack_module("nodes.staged_advanced").DLAStagedKSamplerAdvanced
    error = pack_module("dla_core.errors").DLAInputError
    common = dict(seed=SEED, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0)
    with pytest.raises(error, match=r"positive stage2 conditioning has 96-wide .* reads 4096-wide"):
        node.execute(model, text, latent, tau1=0.95, tau2=0.0, positive_stage2=wrong, **common)
    assert torch.isfinite(node.execute(model, text, latent, tau1=0.95, tau2=0.0, **common).result[0]["samples"]).all()
