"""Parity on FLUX.2 [klein]: the standalone pipeline and the ComfyUI nodes give the same latents (issue 19).

Same files on both sides: a tiny [klein]-like FLUX.2 in ComfyUI's layout (no guidance embedding, context 96;
tests/integration/tiny_flux2.py), a tiny ``flux2-vae.safetensors``-layout VAE (tests/lib/dla_tiny/flux.py;
the pipeline reads it as diffusers' ``AutoencoderKLFlux2``), the tiny tree's InternVL and a random FLUX.2
[klein] DLA for it. ComfyUI: UNETLoader, VAELoader, MLLM Loader -> MLLM Joint Encode -> DLA Loader -> Dual
Layer Aggregation; VAEEncode -> ReferenceLatent; Flux2Scheduler; Staged Guider (Advanced) (stage 1: the DLA
conditioning, stage 2: + the reference) -> SamplerCustomAdvanced (euler, RandomNoise). Pipeline:
``DLASubjectPipeline.from_pretrained`` on the same files, ``reference_megapixels=0`` (the 64 x 48 reference
at its own size), the same seed, steps and taus; compared as ComfyUI LATENTs (FLUX.2's latent format scales
nothing, so model space). What has to line up: noise [1, 128, H/16, W/16] from the CPU generator; sigmas
(``flux2_sampling.flux2_sigmas`` = ``Flux2Scheduler``); the reference's VAE latent (patchified, batch-normed);
the token layout and the 512-token padding (``dla_core.flux.flux2``); the QK-norm epsilon (ComfyUI's).

On the oldest row (ComfyUI 0.3.64, diffusers 0.35) neither side has FLUX.2: the version messages are asserted.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.integration

SIZE = 64
STEPS = 4
SEED = 11
TAU1, TAU2 = 0.95, 0.0  # stage 1 then stage 2; without a stage-3 input the guider keeps stage 2
PROMPT = "the object from the picture on a beach"
CONTEXT = 96
PARITY_ATOL = 1e-4  # as FLUX.1's parity test (which measures 1.9e-6)
NAMES = {"dit": "tiny_flux2_klein_parity.safetensors", "vae": "tiny_flux2_vae_parity.safetensors"}
DLA_NAME = "tiny_flux2_klein_internvl_dla.safetensors"
REFERENCE = "flux2_parity_reference.png"


def _flux2_missing() -> bool:
    from tiny_flux2 import comfy_has_flux2

    from dla_core.flux.flux2 import flux2_diffusers_problem

    problem = flux2_diffusers_problem()
    if comfy_has_flux2() and problem is None:
        return False
    assert problem is None or "need diffusers >=" in problem
    return True


@pytest.fixture(scope="module")
def files(comfy, tiny_models_dir, tiny_names, tmp_path_factory):
    """name -> path of the FLUX.2 files, registered in ComfyUI's model folders; None on a row without FLUX.2."""
    if _flux2_missing():
        return None
    import folder_paths
    from dla_harness.server import write_reference_image
    from tiny_flux2 import build_tiny_flux2

    from dla_core.checkpoint import init_dla, save_dla
    from dla_core.spec import read_mllm_spec
    from dla_tiny.flux import build_tiny_flux2_vae

    root = tmp_path_factory.mktemp("flux2-parity")
    paths = {
        "dit": build_tiny_flux2(root / "unet" / NAMES["dit"], seed=6, context_width=CONTEXT, guidance=False),
        "vae": build_tiny_flux2_vae(root / "vae" / NAMES["vae"], seed=2, dtype=torch.float32),
        "mllm": tiny_models_dir / "mllm" / tiny_names.mllm,
    }
    spec = read_mllm_spec(paths["mllm"])
    dla = init_dla(spec, target="flux2_klein", context_width=CONTEXT, lap_blocks=1, lap_mlp_hidden=64, seed=3)
    paths["dla"] = save_dla(dla, root / "dla" / DLA_NAME)
    for folder, sub in (("diffusion_models", "unet"), ("vae", "vae"), ("dla", "dla")):
        folder_paths.add_model_folder_path(folder, str(root / sub))
    paths["reference"] = write_reference_image(comfy.base_dir / "input" / REFERENCE, size=(SIZE, 48), seed=5)
    return paths


def comfy_latents(comfy, graph, files, tiny_names) -> torch.Tensor:
    unet = graph.add("UNETLoader", unet_name=NAMES["dit"], weight_dtype="default")
    vae = graph.add("VAELoader", vae_name=NAMES["vae"])
    image = graph.add("LoadImage", image=REFERENCE)
    mllm = graph.add("DLAMLLMLoader", mllm_name=tiny_names.mllm, dtype="auto", device="default")
    features = graph.add(
        "DLAMLLMJointEncode", mllm=graph.out(mllm), prompt=PROMPT, image=graph.out(image), image_size=56
    )
    dla = graph.add("DLALoader", dla_name=DLA_NAME)
    positive = graph.add("DLAAggregate", dla=graph.out(dla), mllm_features=graph.out(features), guidance=2.5)
    encoded = graph.add("VAEEncode", pixels=graph.out(image), vae=graph.out(vae))
    with_reference = graph.add("ReferenceLatent", conditioning=graph.out(positive), latent=graph.out(encoded))
    guider = graph.add(
        "DLAStagedGuiderAdvanced",
        model=graph.out(unet),
        positive_stage1=graph.out(positive),
        positive_stage2=graph.out(with_reference),
        cfg=1.0,
        tau1=TAU1,
        tau2=TAU2,
    )
    sampled = graph.add(
        "SamplerCustomAdvanced",
        noise=graph.out(graph.add("RandomNoise", noise_seed=SEED)),
        guider=graph.out(guider),
        sampler=graph.out(graph.add("KSamplerSelect", sampler_name="euler")),
        sigmas=graph.out(graph.add("Flux2Scheduler", steps=STEPS, width=SIZE, height=SIZE)),
        latent_image=graph.out(graph.add("EmptyFlux2LatentImage", width=SIZE, height=SIZE, batch_size=1)),
    )
    graph.add("SaveLatent", samples=graph.out(sampled), filename_prefix="latents/dla_flux2_parity")
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    return comfy.output(sampled)["samples"].float().cpu()


def pipeline_output(files):
    from dla_core.pipeline import DLASubjectPipeline, load_reference_image

    pipe = DLASubjectPipeline.from_pretrained(
        files["dit"], files["vae"], files["mllm"], files["dla"], dtype="fp32", device="cpu"
    )
    assert pipe.family == "flux2"
    return pipe(
        PROMPT,
        load_reference_image(files["reference"]),
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        tau1=TAU1,
        tau2=TAU2,
        seed=SEED,
        reference_method="index",
        reference_megapixels=0.0,
        mllm_image_size=56,
        output_type="pil",
        progress=False,
    )


def test_flux2_sigmas_are_comfyuis_flux2_scheduler(comfy):
    if _flux2_missing():
        return
    from comfy_extras.nodes_flux import Flux2Scheduler

    from dla_core.flux.flux2_sampling import flux2_sigmas

    for steps, width, height in ((4, 64, 64), (20, 1024, 1024), (28, 1344, 768), (50, 2048, 2048)):
        comfy_sigmas = Flux2Scheduler.execute(steps, width, height).result[0]
        assert torch.equal(flux2_sigmas(height, width, steps), comfy_sigmas.float())


def test_pipeline_latents_match_comfyui_nodes_on_flux2_klein(files, comfy, graph, tiny_names):
    if files is None:
        return
    theirs = comfy_latents(comfy, graph, files, tiny_names)
    output = pipeline_output(files)
    ours = output.latents
    assert ours.shape == theirs.shape == (1, 128, SIZE // 16, SIZE // 16)
    assert set(output.stages) == {1, 2} and len(output.images) == 1 and output.images[0].size == (SIZE, SIZE)
    gap = (ours - theirs).abs().max().item()
    print(f"FLUX.2 [klein] pipeline vs ComfyUI nodes: max |diff| {gap:.3g} (latent std {theirs.std():.3g})")
    assert theirs.std() > 0.1  # a real result, not zeros
    torch.testing.assert_close(ours, theirs, atol=PARITY_ATOL, rtol=1e-5)


def test_generate_command_runs_flux2_klein_and_writes_the_pipelines_image(files, tmp_path):
    if files is None:
        return
    import numpy as np
    from PIL import Image

    from dla_core.cli import main

    out = tmp_path / "klein.png"
    argv = ["generate", "--flux", str(files["dit"]), "--vae", str(files["vae"]), "--mllm", str(files["mllm"])]
    argv += ["--dla", str(files["dla"]), "--reference", str(files["reference"]), "--prompt", PROMPT]
    argv += ["--out", str(out), "--steps", str(STEPS), "--width", str(SIZE), "--height", str(SIZE)]
    argv += ["--tau1", str(TAU1), "--tau2", str(TAU2), "--seed", str(SEED), "--reference-megapixels", "0"]
    argv += ["--mllm-image-size", "56", "--dtype", "fp32", "--no-progress"]
    assert main(argv) == 0
    expected = np.asarray(pipeline_output(files).images[0])
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), expected)
