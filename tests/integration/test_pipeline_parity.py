"""Parity: the standalone diffusers pipeline and the ComfyUI nodes give the same latents.

Same weights on both sides (the tiny BFL-layout FLUX, the tiny ae.safetensors VAE, the tiny
InternVL and DLA of the harness's tiny tree, tests/lib/dla_harness), same seed and settings. The choices that
have to line up, and how each is matched:

- noise: ComfyUI's ``comfy.sample.prepare_noise`` (``torch.randn`` of the whole latent batch,
  float32, CPU generator seeded with ``seed``) = ``DLASubjectPipeline.prepare_latents``;
- latent format: ComfyUI's FLUX ``process_latent_in`` ``(x - 0.1159) * 0.3611`` = the VAE's
  ``shift_factor`` / ``scaling_factor`` (set by ``load_flux_vae``); compared in VAE space
  (ComfyUI's LATENT, the pipeline's ``output.latents``);
- sigmas: the pipeline shifts FLUX's schedule by the image size (diffusers' ``mu``); in
  ComfyUI the same needs ``ModelSamplingFlux`` at that width/height, then "simple"; 4 steps
  divide ComfyUI's 10000-entry sigma table, so both sample the same unshifted times;
- sampler: ComfyUI "euler" on a flow model = ``x + (sigma_next - sigma) * v``; cfg 1 on both;
- conditioning: the DLA tokens with padding stripped, pooled vector and guidance 2.5; stage 3
  the DLA's null tokens + null pooled vector (guidance kept); references (64x64 PNG,
  ``megapixels=0`` = encoded at their own size) VAE-encoded with the posterior mode and placed
  with the "offset" method;
- dtypes: float32 everywhere (ComfyUI ``--cpu`` loads the bf16 file as float32; the pipeline
  gets ``dtype="fp32"``).

Measured (CPU, torch 2.14.1, diffusers 0.35.2, ComfyUI 0.3.64): max |diff| 1.9e-6 on latents of
std 3.9 after 4 steps through all three stages; the test allows 1e-4 (+1e-5 relative). What
remains is float32 rounding in differently ordered attention / RoPE / modulation arithmetic.
Memory: two float32 copies of the 1+1-block, 3072-wide FLUX (ComfyUI's and the pipeline's)
plus the LoRA-patched one, about 6 GB peak RSS; about 5 minutes on 2 busy CPU cores.
"""

from __future__ import annotations

import pytest
import torch
from dla_harness import add_dla_pipeline

pytestmark = pytest.mark.integration

SIZE = 64
STEPS = 4  # divides 10000: ComfyUI's "simple" scheduler hits the same unshifted times
SEED = 7
TAU1, TAU2 = 0.9, 0.7  # at 64x64 the shifted sigmas are 1.0, 0.83, 0.61, 0.35: stages 1, 2, 3, 3
GUIDANCE = 2.5
MLLM_IMAGE_SIZE = 56  # add_dla_pipeline's image_size
PROMPT = "the object from the picture on a beach"
PARITY_ATOL = 1e-4  # absolute, on VAE-space latents of std ~4; measured max |diff| 1.9e-6
PARITY_RTOL = 1e-5


_CACHE: dict = {}  # results shared by the tests of this module (the fixtures they need are function-scoped)
TINY_LORA_FILE = "tiny_flux_lora.safetensors"  # the tiny tree's LoRA in ComfyUI's diffusion_model.*.lora_up/down layout


def comfy_staged_latents(comfy, graph, lora: bool) -> torch.Tensor:
    """Final LATENT of UNETLoader [-> LoraLoaderModelOnly] -> ModelSamplingFlux -> DLAStagedKSampler."""
    key = ("comfy", lora)
    if key not in _CACHE:
        nodes = add_dla_pipeline(graph, prompt_text=PROMPT, size=SIZE, guidance=GUIDANCE, lora=lora, placement="offset")
        shifted = graph.add(
            "ModelSamplingFlux", model=graph.out(nodes.model), max_shift=1.15, base_shift=0.5, width=SIZE, height=SIZE
        )
        sampler = graph.add(
            "DLAStagedKSampler",
            model=graph.out(shifted),
            positive=graph.out(nodes.positive),
            latent_image=graph.out(nodes.latent),
            seed=SEED,
            steps=STEPS,
            cfg=1.0,
            sampler_name="euler",
            scheduler="simple",
            denoise=1.0,
            tau1=TAU1,
            tau2=TAU2,
            identity=graph.out(nodes.identity),
        )
        graph.add("SaveLatent", samples=graph.out(sampler), filename_prefix="latents/dla_parity")  # an output node
        result = comfy.run(graph.prompt)
        assert result.success, result.error_text
        _CACHE[key] = comfy.output(sampler)["samples"].float().cpu()
    return _CACHE[key]


def pipeline_run(comfy, models, lora: bool):
    """The same generation with DLASubjectPipeline on the same files (LoRA applied with strength 1)."""
    key = ("pipeline", lora)
    if key in _CACHE:
        return _CACHE[key]
    from dla_core.pipeline import DLASubjectPipeline, load_reference_image

    if "pipe" not in _CACHE:
        _CACHE["pipe"] = DLASubjectPipeline.from_pretrained(
            models / "diffusion_models" / "tiny_flux.safetensors",
            models / "vae" / "tiny_ae.safetensors",
            models / "mllm" / "tiny-internvl",
            models / "dla" / "tiny_dla.safetensors",
            dtype="fp32",
            device="cpu",
        )
    pipe = _CACHE["pipe"]
    if lora:
        pipe.load_lora(models / "loras" / TINY_LORA_FILE, scale=1.0)
        pipe.transformer.enable_adapters()
    elif getattr(pipe.transformer, "_hf_peft_config_loaded", False):
        pipe.transformer.disable_adapters()
    reference = load_reference_image(comfy.base_dir / "input" / "reference.png")
    _CACHE[key] = pipe(
        PROMPT,
        reference,
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        tau1=TAU1,
        tau2=TAU2,
        seed=SEED,
        reference_method="offset",
        reference_megapixels=0.0,
        mllm_image_size=MLLM_IMAGE_SIZE,
        output_type="latent",
        progress=False,
    )
    return _CACHE[key]


@pytest.fixture
def comfy_latents(comfy, graph):
    return comfy_staged_latents(comfy, graph, lora=False)


@pytest.fixture
def pipeline_output(comfy, tiny_models_dir):
    return pipeline_run(comfy, tiny_models_dir, lora=False)


def test_schedule_visits_all_three_stages(pipeline_output):
    assert pipeline_output.stages == [1, 2, 3, 3]


def test_pipeline_latents_match_comfyui_staged_ksampler(pipeline_output, comfy_latents):
    ours = pipeline_output.latents
    assert ours.shape == comfy_latents.shape == (1, 16, SIZE // 8, SIZE // 8)
    difference = (ours - comfy_latents).abs().max().item()
    print(f"pipeline vs ComfyUI: max |diff| = {difference:.3g}, latent std = {comfy_latents.std().item():.3g}")
    torch.testing.assert_close(ours, comfy_latents, atol=PARITY_ATOL, rtol=PARITY_RTOL)


def test_parity_is_not_trivial(pipeline_output, comfy_latents):
    noise = torch.randn(comfy_latents.shape, generator=torch.manual_seed(SEED)) / 0.3611 + 0.1159  # VAE space
    assert (comfy_latents - noise).abs().max() > 100 * PARITY_ATOL  # the model moved the latent far from the noise


def test_comfyui_format_lora_gives_the_same_latents_as_lora_loader_model_only(comfy, graph, tiny_models_dir):
    ours = pipeline_run(comfy, tiny_models_dir, lora=True).latents
    theirs = comfy_staged_latents(comfy, graph, lora=True)
    difference = (ours - theirs).abs().max().item()
    print(f"pipeline vs ComfyUI with LoRA: max |diff| = {difference:.3g}")
    torch.testing.assert_close(ours, theirs, atol=PARITY_ATOL, rtol=PARITY_RTOL)
    base = pipeline_run(comfy, tiny_models_dir, lora=False).latents
    assert (ours - base).abs().max() > 100 * PARITY_ATOL  # the LoRA really changed the model
