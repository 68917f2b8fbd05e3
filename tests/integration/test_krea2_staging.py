"""Staged references on Krea 2 (issue 21.1), probed per model call, in a real ComfyUI on a tiny Krea 2 DiT.

The tiny DiT (tests/lib/dla_tiny/krea2.py) is loaded by ComfyUI's own loader and detected from its
weights (``txtfusion.projector.weight``). Krea 2 reads ComfyUI's ``reference_latents`` with method
``index`` or ``index_timestep_zero``; its DiT (ComfyUI 0.33) has no method of its own, so references
without one never reach it, which the first test pins and why Reference Latents (DLA) offers
``krea2 (index)``. A probe wrapped around the model records, for every model call, which reference
latents reach the DiT (identified by their distinct sizes). Where the active set never changes,
sampling equals ComfyUI's own sampler on the conditioning with exactly those references, bit for bit.

ComfyUI 0.3.64 has no Krea 2: there every test asserts the pack's one-line notice instead.
"""

from __future__ import annotations

import pytest
import torch
from dla_harness import pack_module

from dla_tiny.krea2 import DIT_TXT_LAYERS, STAGING_TXT_WIDTH, build_tiny_krea2_dit, comfy_has_krea2

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 11
STEPS = 5
CONTEXT_WIDTH = DIT_TXT_LAYERS * STAGING_TXT_WIDTH  # 12 x 40 per token


def _random(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.5


@pytest.fixture(scope="module")
def krea2(comfy, tmp_path_factory):
    """(ModelPatcher, text conditioning, latent, [reference A, reference B]); None without Krea 2."""
    if not comfy_has_krea2():
        yield None
        return
    import comfy.model_management
    import comfy.sd

    from dla_tiny.cache import cached_build

    path = cached_build(build_tiny_krea2_dit, tmp_path_factory.mktemp("krea2-dit"), seed=0)
    yield (
        comfy.sd.load_diffusion_model(str(path)),  # what UNETLoader runs
        [[_random(1, 5, CONTEXT_WIDTH, seed=10), {}]],
        {"samples": torch.zeros(1, 16, 1, 8, 8)},  # Wan 2.1 latent format: [batch, 16, frames, h, w]
        [_random(1, 16, 1, 8, 8, seed=20), _random(1, 16, 1, 4, 12, seed=21)],
    )
    comfy.model_management.unload_all_models()


def _models(krea2):
    """The Krea 2 models, or None after checking the one-line notice where this ComfyUI lacks Krea 2."""
    if krea2 is not None:
        return krea2
    message = pack_module("nodes.compat").krea2_missing_message()
    assert message.startswith("Krea 2 needs a newer ComfyUI") and "has no Krea 2" in message
    return None


def with_references(conditioning: list, references: list, method: str = "index") -> list:
    import node_helpers

    values = {"reference_latents": list(references), "reference_latents_method": method}
    return node_helpers.conditioning_set_values(conditioning, values, append=True)


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
    import comfy.samplers

    staged = pack_module("nodes.staged_guider")
    model_sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, "simple", STEPS)
    return [staged.normalised_time(model_sampling, s) for s in sigmas[:-1]]


def _mid(a: float, b: float) -> float:
    return (a + b) / 2


def _native(model, positive, latent) -> torch.Tensor:
    import nodes as comfy_nodes

    negative = [[torch.zeros_like(positive[0][0]), {}]]  # never evaluated at cfg 1
    return comfy_nodes.common_ksampler(
        model, SEED, STEPS, 1.0, "euler", "simple", positive, negative, latent, denoise=1.0
    )[0]["samples"]


def _run_guider(model, positives: dict, timing: str, tau1: float, tau2: float, latent: dict):
    library = pack_module("nodes.staged_guider")
    guider = pack_module("nodes.staged_advanced").staged_guider_advanced(
        model, cfg=1.0, tau1=tau1, tau2=tau2, positives=positives, negatives={}, reference_timing=timing
    )
    settings = library.KSamplerSettings(seed=SEED, steps=STEPS, sampler_name="euler", scheduler="simple", denoise=1.0)
    with library.record_model_calls() as calls:
        samples = library.ksample_with_guider(guider, model, latent, settings)
    return calls, samples["samples"]


def test_comfyui_detects_the_tiny_krea2_and_its_dit_has_no_reference_method_of_its_own(krea2):
    found = _models(krea2)
    if found is None:
        return
    import comfy.latent_formats
    import comfy.model_base

    model = found[0]
    assert isinstance(model.model, comfy.model_base.Krea2)
    assert isinstance(model.model.latent_format, comfy.latent_formats.Wan21)
    diffusion_model = model.model.diffusion_model
    assert (diffusion_model.txtlayers, diffusion_model.txtdim) == (DIT_TXT_LAYERS, STAGING_TXT_WIDTH)
    assert diffusion_model.default_ref_method is None


def test_references_without_a_method_never_reach_krea2_and_with_index_they_do(krea2):
    """Why Reference Latents (DLA) offers 'krea2 (index)': ComfyUI 0.33's Krea 2 drops references lacking a method."""
    found = _models(krea2)
    if found is None:
        return
    import node_helpers

    model, text, latent, references = found
    without_method = node_helpers.conditioning_set_values(text, {"reference_latents": references}, append=True)
    assert torch.equal(_native(model, without_method, latent), _native(model, text, latent))
    assert not torch.equal(_native(model, with_references(text, references), latent), _native(model, text, latent))
    assert pack_module("dla_core.qwen_template").MODEL_REFERENCE_METHODS["krea2"] == "index"
    method, note = pack_module("nodes.qwen_identity").choose_method("krea2 (index)")
    assert (method, note) == ("index", "")


@pytest.mark.parametrize("method", ["index", "index_timestep_zero"])
def test_stage_1_sends_no_references_and_stages_2_3_send_them_all(krea2, method):
    found = _models(krea2)
    if found is None:
        return
    model, text, latent, references = found
    times = _call_times(model)
    tau1, tau2 = _mid(times[0], times[1]), _mid(times[2], times[3])  # calls 0 | 1, 2 | 3, 4
    probe = Probe(model)
    staged = with_references(text, references, method)
    calls, samples = _run_guider(probe.model, {1: text, 2: staged, 3: staged}, "", tau1, tau2, latent)
    sizes = [tuple(r.shape[-2:]) for r in references]
    assert [call.stage for call in calls] == [1, 2, 2, 3, 3]
    assert [refs for _, refs in probe.calls] == [[], sizes, sizes, sizes, sizes]
    assert torch.isfinite(samples).all()


def test_each_reference_reaches_krea2_exactly_in_its_own_range(krea2):
    found = _models(krea2)
    if found is None:
        return
    model, text, latent, references = found
    times = _call_times(model)
    size_a, size_b = (tuple(r.shape[-2:]) for r in references)
    timing = f"{_mid(times[1], times[2]):.6f}-0, 1-{_mid(times[3], times[4]):.6f}"
    probe = Probe(model)
    conditioning = with_references(text, references)
    calls, _ = _run_guider(probe.model, {1: text, 2: conditioning}, timing, _mid(times[0], times[1]), 0.0, latent)
    assert [refs for _, refs in probe.calls] == [[], [size_b], [size_a, size_b], [size_a, size_b], [size_a]]
    assert [call.references for call in calls][1:] == [(False, True), (True, True), (True, True), (True, False)]


def test_one_stage_runs_are_bit_identical_to_native_krea2_sampling(krea2):
    found = _models(krea2)
    if found is None:
        return
    model, text, latent, references = found
    times = _call_times(model)
    both = with_references(text, references)
    only_a = with_references(text, references[:1])
    node = pack_module("nodes.staged_advanced").DLAStagedKSamplerAdvanced
    common = dict(seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0)

    def staged(positive, timing: str = "") -> torch.Tensor:  # tau 0/0: every call in one stage
        out = node.execute(model, positive, latent, tau1=0.0, tau2=0.0, reference_timing=timing, **common)
        return out.result[0]["samples"]

    with_both, with_a = _native(model, both, latent), _native(model, only_a, latent)
    assert not torch.equal(with_both, with_a) and not torch.equal(with_both, _native(model, text, latent))
    assert torch.equal(staged(text), _native(model, text, latent))
    assert torch.equal(staged(both), with_both)
    assert torch.equal(staged(both, f"1-0, 1-{times[-1] / 2:.6f}"), with_both)  # B's range covers every call
    assert torch.equal(staged(both, f"1-0, {times[-1] / 2:.6f}-0"), with_a)  # B's range holds no call
    assert not torch.equal(staged(both, f"1-0, {_mid(times[1], times[2]):.6f}-0"), with_a)  # B joins mid-run


def test_the_staged_guider_with_samplercustomadvanced_equals_cfgguider_per_stage(krea2):
    import comfy.sample
    import comfy.samplers

    found = _models(krea2)
    if found is None:
        return
    model, text, latent, references = found
    advanced = pack_module("nodes.staged_advanced")
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)
    sampler = comfy.samplers.sampler_object("euler")
    conditioning = with_references(text, references)

    def run(guider, sigmas=sigmas) -> torch.Tensor:
        noise = comfy.sample.prepare_noise(latent["samples"], SEED)
        return guider.sample(noise, latent["samples"], sampler, sigmas, seed=SEED)

    def native_guider(positive):
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(positive, positive)
        guider.set_cfg(1.0)
        return guider

    for tau1, stage_positive, stage_sigmas in ((0.0, text, sigmas), (1.0, conditioning, sigmas[1:])):
        staged = advanced.DLAStagedGuiderAdvanced.execute(model, text, 1.0, tau1, 0.0, positive_stage2=conditioning)
        assert torch.equal(run(staged.result[0], stage_sigmas), run(native_guider(stage_positive), stage_sigmas))


def test_the_model_fit_check_reads_krea2s_text_width(krea2):
    """A FLUX-wide conditioning on Krea 2 is one clear error before sampling, naming both widths."""
    found = _models(krea2)
    if found is None:
        return
    model, _, latent, _ = found
    model_fit = pack_module("nodes.model_fit")
    assert model_fit.model_context_width(model) == CONTEXT_WIDTH
    error = pack_module("dla_core.errors").DLAInputError
    node = pack_module("nodes.staged_advanced").DLAStagedKSamplerAdvanced
    wrong = [[_random(1, 4, 4096, seed=30), {"pooled_output": _random(1, 768, seed=31), "guidance": 2.5}]]
    common = dict(seed=SEED, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0)
    with pytest.raises(error, match=rf"has 4096-wide text tokens \(for target 'flux'.*reads {CONTEXT_WIDTH}-wide"):
        node.execute(model, wrong, latent, tau1=0.95, tau2=0.0, reference_timing="", **common)


def test_a_krea2_dla_on_flux_is_one_clear_error(comfy, tiny_models_dir, tiny_names):
    """The width check against a FLUX model names target krea2 (on both rows: no Krea 2 model is needed)."""
    import comfy.sd

    flux = comfy.sd.load_diffusion_model(str(tiny_models_dir / "diffusion_models" / tiny_names.flux))
    init_dla = pack_module("dla_core.checkpoint").init_dla
    spec = pack_module("dla_core.spec").MLLMSpec("qwen3_vl", 37, 8)
    dla = init_dla(spec, target="krea2", init="identity", context_width=96, lap_blocks=0)
    error = pack_module("dla_core.errors").DLAInputError
    with pytest.raises(error, match=r"for target 'krea2' \(Krea 2 .*reads 4096-wide tokens \(target 'flux'"):
        pack_module("nodes.model_fit").check_dla_fits_model(dla.config, flux)
