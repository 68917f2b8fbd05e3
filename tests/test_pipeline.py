"""DLASubjectPipeline and the staged FLUX loop on tiny random models (CPU, 32x32, few steps)."""

import pytest
import torch
from dla_flux_oracle import flux_shifted_sigmas
from PIL import Image

from dla_core.errors import DLAInputError
from dla_core.flux.sampling import StagedConditioning, flux_sigmas, staged_euler_sample
from dla_core.generate import build_embedded_models
from dla_core.pipeline import DLASubjectPipeline
from dla_core.schedule import stages_for_sigmas

SIZE = 32
STEPS = 4
PROMPT = "the toy robot on a beach"


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory):
    return build_embedded_models(tmp_path_factory.getbasetemp() / "dla_selftest")


@pytest.fixture(scope="module")
def pipe(model_paths):
    p = model_paths
    return DLASubjectPipeline.from_pretrained(p["flux"], p["vae"], p["mllm"], p["dla"], device="cpu")


@pytest.fixture(scope="module")
def reference():
    generator = torch.Generator().manual_seed(3)
    pixels = (torch.rand(40, 56, 3, generator=generator) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, mode="RGB")


def run(pipe, reference, **kwargs):
    settings = dict(
        height=SIZE, width=SIZE, num_inference_steps=STEPS, tau1=0.9, tau2=0.6, output_type="latent", progress=False
    )
    settings.update(kwargs)
    return pipe(PROMPT, reference, **settings)


def random_conditioning(seed, refs):
    generator = torch.Generator().manual_seed(seed)
    return StagedConditioning(
        tokens=torch.randn(1, 7, 4096, generator=generator),
        pooled=torch.randn(1, 768, generator=generator),
        null_tokens=torch.randn(1, 4, 4096, generator=generator),
        null_pooled=torch.randn(1, 768, generator=generator),
        reference_latents=refs,
    )


# Below sigma 1, so taus of 1.0 can put every step in stage 2 (tau1=1, tau2=0) or 3 (tau1=tau2=1).
LOW_SIGMAS = torch.tensor([0.9, 0.7, 0.5, 0.3, 0.0])


def noise(seed=0):
    return DLASubjectPipeline.prepare_latents(1, SIZE, SIZE, seed)


# ---------------------------------------------------------------------- pipeline


def test_same_seed_gives_identical_latents(pipe, reference):
    first = run(pipe, reference, seed=7).latents
    second = run(pipe, reference, seed=7).latents
    assert torch.equal(first, second)
    assert torch.isfinite(first).all()


def test_different_seed_gives_different_latents(pipe, reference):
    assert not torch.allclose(run(pipe, reference, seed=7).latents, run(pipe, reference, seed=8).latents)


def test_batch_of_two_equals_two_single_runs_with_the_same_noise(pipe, reference):
    batch_noise = DLASubjectPipeline.prepare_latents(2, SIZE, SIZE, seed=11)
    batch = run(pipe, reference, num_images=2, seed=11).latents
    for index in range(2):
        single = run(pipe, reference, latents=batch_noise[index : index + 1]).latents
        torch.testing.assert_close(batch[index : index + 1], single, rtol=1e-5, atol=1e-5)


def test_noise_is_comfyui_style_cpu_randn_of_whole_batch():
    expected = torch.randn((2, 16, 4, 4), generator=torch.manual_seed(5), dtype=torch.float32, device="cpu")
    assert torch.equal(DLASubjectPipeline.prepare_latents(2, SIZE, SIZE, seed=5), expected)


def test_steps_follow_stage_for_sigma(pipe, reference):
    seen = []
    out = run(pipe, reference, num_inference_steps=6, callback=lambda step, stage, x: seen.append(stage))
    expected = stages_for_sigmas(out.sigmas, 0.9, 0.6)
    assert out.stages == seen == expected
    assert set(expected) == {1, 2, 3}


def test_output_latents_are_in_vae_space(pipe, reference):
    out = run(pipe, reference)
    model_space = pipe.to_model_space(out.latents)
    torch.testing.assert_close(model_space, (out.latents - 0.1159) * 0.3611)
    torch.testing.assert_close(pipe.to_vae_space(model_space), out.latents)


def test_reference_latents_keep_aspect_on_multiples_of_16(pipe, reference):
    latents, sizes = pipe.prepare_reference_latents([reference], megapixels=0.001)  # cap 1000 px^2
    assert sizes == [(32, 32)]  # 56x40 scaled to ~37x26, rounded to 16 px multiples
    assert latents[0].shape == (1, 16, 4, 4)


def test_offload_free_drops_the_mllm_and_a_second_call_says_so(model_paths, reference):
    p = model_paths
    pipe = DLASubjectPipeline.from_pretrained(p["flux"], p["vae"], p["mllm"], p["dla"], offload_mllm="free")
    run(pipe, reference, num_inference_steps=1)
    assert pipe.mllm is None
    with pytest.raises(DLAInputError, match="freed"):
        run(pipe, reference, num_inference_steps=1)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(prompt="   "), "prompt is empty"),
        (dict(tau1=0.5, tau2=0.8), "tau2 no larger than tau1"),
        (dict(num_inference_steps=0), "steps must be at least 1"),
        (dict(height=40), "multiple of 16"),
        (dict(reference=Image.new("RGBA", (32, 32))), "alpha"),
        (dict(reference=Image.new("L", (32, 32))), "grayscale"),
        (dict(true_cfg_scale=0.5), "true_cfg_scale"),
        (dict(reference_method="diagonal"), "offset, index, uxo"),
    ],
)
def test_bad_inputs_raise_clear_errors_before_any_model_runs(reference, change, message):
    args = dict(
        prompt=PROMPT,
        reference=reference,
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        guidance_scale=2.5,
        tau1=0.95,
        tau2=0.85,
    )
    args.update(change)
    with pytest.raises(DLAInputError, match=message):
        DLASubjectPipeline.check_inputs(
            args["prompt"],
            args["reference"],
            args["height"],
            args["width"],
            args["num_inference_steps"],
            args["guidance_scale"],
            args["tau1"],
            args["tau2"],
            true_cfg_scale=args.get("true_cfg_scale", 1.0),
            reference_method=args.get("reference_method", "offset"),
        )


# ---------------------------------------------------------------------- staged loop


def test_flux_sigmas_are_the_shifted_flux_schedule():
    torch.testing.assert_close(flux_sigmas(1024, 1024, 28), torch.tensor(flux_shifted_sigmas(1024, 1024, 28)))
    assert (
        stages_for_sigmas(flux_sigmas(1024, 1024, 28), 0.95, 0.85).count(1) == 4
    )  # the paper (arXiv 2605.26111): 4 / 7 / 17


def test_all_stage_one_schedule_ignores_reference_latents(pipe):
    sigmas = flux_sigmas(SIZE, SIZE, STEPS)
    refs_a = [torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))]
    refs_b = [torch.randn(1, 16, 6, 2, generator=torch.Generator().manual_seed(2))]
    out_a, stages = staged_euler_sample(
        pipe.transformer, noise(), sigmas, random_conditioning(0, refs_a), 0.0, 0.0, progress=False
    )
    out_b, _ = staged_euler_sample(
        pipe.transformer, noise(), sigmas, random_conditioning(0, refs_b), 0.0, 0.0, progress=False
    )
    out_none, _ = staged_euler_sample(
        pipe.transformer, noise(), sigmas, random_conditioning(0, []), 0.0, 0.0, progress=False
    )
    assert stages == [1] * STEPS
    assert torch.equal(out_a, out_b) and torch.equal(out_a, out_none)


def test_stage_two_reads_reference_latents(pipe):
    sigmas = LOW_SIGMAS
    refs_a = [torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))]
    refs_b = [torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(2))]
    out_a, stages = staged_euler_sample(
        pipe.transformer, noise(), sigmas, random_conditioning(0, refs_a), 1.0, 0.0, progress=False
    )
    out_b, _ = staged_euler_sample(
        pipe.transformer, noise(), sigmas, random_conditioning(0, refs_b), 1.0, 0.0, progress=False
    )
    assert stages == [2] * STEPS
    assert not torch.allclose(out_a, out_b)


def test_all_stage_three_schedule_ignores_mllm_tokens(pipe):
    sigmas = LOW_SIGMAS
    refs = [torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))]
    cond_a, cond_b = random_conditioning(0, refs), random_conditioning(1, refs)
    cond_b.null_tokens, cond_b.null_pooled = cond_a.null_tokens, cond_a.null_pooled  # only the MLLM tokens differ
    out_a, stages = staged_euler_sample(pipe.transformer, noise(), sigmas, cond_a, 1.0, 1.0, progress=False)
    out_b, _ = staged_euler_sample(pipe.transformer, noise(), sigmas, cond_b, 1.0, 1.0, progress=False)
    assert stages == [3] * STEPS
    assert torch.equal(out_a, out_b)


def test_true_cfg_changes_nothing_in_the_identity_only_stage(pipe):
    sigmas = LOW_SIGMAS
    cond = random_conditioning(0, [torch.randn(1, 16, 4, 4)])
    plain, _ = staged_euler_sample(pipe.transformer, noise(), sigmas, cond, 1.0, 1.0, progress=False)
    cfg, _ = staged_euler_sample(pipe.transformer, noise(), sigmas, cond, 1.0, 1.0, true_cfg_scale=4.0, progress=False)
    torch.testing.assert_close(plain, cfg)


def test_true_cfg_amplifies_the_mllm_condition_in_stage_one(pipe):
    sigmas = flux_sigmas(SIZE, SIZE, STEPS)
    cond = random_conditioning(0, [])
    plain, _ = staged_euler_sample(pipe.transformer, noise(), sigmas, cond, 0.0, 0.0, progress=False)
    cfg, _ = staged_euler_sample(pipe.transformer, noise(), sigmas, cond, 0.0, 0.0, true_cfg_scale=4.0, progress=False)
    assert not torch.allclose(plain, cfg)
