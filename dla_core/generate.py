"""``python -m dla_core generate``: the whole method from the shell.

With the four model flags (``--flux --vae --mllm --dla``) it runs :class:`DLASubjectPipeline`
on those local files. With none of them it runs the **embedded default**: tiny random models
(a tiny InternVL, a tiny FLUX transformer and VAE, a random DLA) built once into a cache
folder, so the whole chain (joint MLLM encoding, DLA, reference latents, three-stage
sampling, decoding) runs anywhere in seconds as an installation self-test. Its image comes
from random weights and says so. The self-test needs no input either: without ``--reference`` and
``--prompt`` it uses the reference image bundled with the package (:data:`BUNDLED_REFERENCE`) and
:data:`BUNDLED_PROMPT`, so ``python -m dla_core generate --out out.png`` checks a fresh install.

Every argument is checked before any model is built or loaded; a problem prints one
``error: ...`` line and exits with code 2 (see :mod:`dla_core.cli`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch

from .checkpoint import init_dla, save_dla
from .checks import finite_float
from .errors import DLAInputError
from .flux.references import REFERENCE_METHODS
from .flux.sampling import DEFAULT_GUIDANCE
from .images import to_pil_list
from .pipeline import DEFAULT_REFERENCE_MEGAPIXELS, DLASubjectPipeline, load_reference_image
from .schedule import DEFAULT_TAU1, DEFAULT_TAU2
from .selftest_models import build_tiny_diffusers_flux, build_tiny_diffusers_vae, build_tiny_internvl
from .spec import read_mllm_spec

EMBEDDED_VERSION = "1"  # bump when the embedded models change, so old caches are rebuilt
EMBEDDED_SIZE = 64  # px, embedded default image side
EMBEDDED_STEPS = 8
MODEL_FLAGS = ("flux", "vae", "mllm", "dla")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# The self-test's input when none is given: a small drawing shipped as package data (pyproject.toml
# [tool.setuptools.package-data]), so it is there after `pip install`, not only in a clone.
BUNDLED_REFERENCE = "assets/reference.png"
BUNDLED_PROMPT = "the robot standing on a beach at sunset"
RANDOM_WEIGHTS_NOTICE = (
    "NOTE: no model flags given, so this ran the EMBEDDED SELF-TEST models: tiny networks with RANDOM weights.\n"
    "      The image is noise-like and says nothing about the method's quality; it only shows that the\n"
    "      installation runs end to end. Pass --flux, --vae, --mllm and --dla for real generations."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``generate``."""
    parser.add_argument(
        "--reference",
        action="append",
        metavar="IMAGE",
        help="reference image of the subject (RGB); repeat for several references "
        "(self-test without it: the bundled robot drawing)",
    )
    parser.add_argument(
        "--prompt",
        help=f"instruction, e.g. 'the dog swimming in a pool' (self-test without it: '{BUNDLED_PROMPT}')",
    )
    parser.add_argument(
        "--out", required=True, help="output image (.png/.jpg/.webp); several images get _0, _1 ... suffixes"
    )
    models = parser.add_argument_group("models (all four, or none for the embedded random self-test)")
    models.add_argument(
        "--flux",
        help="FLUX.1 or FLUX.2 ([klein], [dev]) transformer: diffusers folder or single-file .safetensors "
        "(BFL/ComfyUI layout; FLUX.2 is recognised by its weights and needs diffusers >= 0.37)",
    )
    models.add_argument(
        "--flux-config", help="folder with the transformer's config.json, for a single-file --flux (default: inferred)"
    )
    models.add_argument(
        "--vae",
        help="FLUX VAE: diffusers AutoencoderKL folder or ae.safetensors; FLUX.2: AutoencoderKLFlux2 folder or "
        "flux2-vae.safetensors",
    )
    models.add_argument("--mllm", help="Hugging Face MLLM folder (InternVL3 -hf, Qwen2.5-VL, Qwen3-VL)")
    models.add_argument("--dla", help="DLA checkpoint (.safetensors)")
    models.add_argument("--lora", help="optional FLUX LoRA (.safetensors)")
    models.add_argument("--lora-scale", type=finite_float, default=1.0, help="LoRA strength (default 1.0)")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--steps", type=int, help=f"denoising steps (default 28; self-test {EMBEDDED_STEPS})")
    sampling.add_argument(
        "--guidance",
        type=finite_float,
        default=DEFAULT_GUIDANCE,
        help=f"FLUX distilled guidance (default {DEFAULT_GUIDANCE})",
    )
    sampling.add_argument(
        "--true-cfg",
        type=finite_float,
        default=1.0,
        help="true CFG scale against the 'MLLM off' conditioning (default 1 = off)",
    )
    sampling.add_argument(
        "--tau1",
        type=finite_float,
        default=DEFAULT_TAU1,
        help=f"MLLM-only stage for t >= tau1 (default {DEFAULT_TAU1})",
    )
    sampling.add_argument(
        "--tau2",
        type=finite_float,
        default=DEFAULT_TAU2,
        help=f"identity-only stage for t < tau2 (default {DEFAULT_TAU2})",
    )
    sampling.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    sampling.add_argument(
        "--width", type=int, help=f"image width in px, multiple of 16 (default 1024; self-test {EMBEDDED_SIZE})"
    )
    sampling.add_argument(
        "--height", type=int, help=f"image height in px, multiple of 16 (default 1024; self-test {EMBEDDED_SIZE})"
    )
    sampling.add_argument("--num-images", type=int, default=1, help="images to generate (default 1)")
    sampling.add_argument(
        "--reference-method",
        default=None,
        choices=REFERENCE_METHODS,
        help="placement of the reference tokens (default: offset for FLUX.1, as FLUX Kontext; index for FLUX.2, "
        "its own and only one)",
    )
    sampling.add_argument(
        "--reference-megapixels",
        type=finite_float,
        default=DEFAULT_REFERENCE_MEGAPIXELS,
        help="largest reference area for the VAE in megapixels (default 1.0; 0 = keep size)",
    )
    sampling.add_argument(
        "--mllm-image-size", type=int, help="MLLM-side reference resolution in px (default: the processor's)"
    )
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    runtime.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="transformer/VAE dtype (auto: bf16 on CUDA, fp32 on CPU)",
    )
    runtime.add_argument(
        "--mllm-dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="MLLM dtype (auto: the folder's)"
    )
    runtime.add_argument(
        "--offload-mllm",
        default="auto",
        choices=("auto", "none", "cpu", "free"),
        help="what happens to the MLLM after encoding (auto: cpu when running on a GPU)",
    )
    runtime.add_argument(
        "--cache-dir", help="where the embedded self-test models are built (default: ~/.cache/comfyui-dla-subject)"
    )
    runtime.add_argument("--no-progress", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------- validation


def _resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DLAInputError(f"Unknown device '{name}': use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DLAInputError(f"--device {name} asked for, but no CUDA GPU is visible; use --device cpu.")
    return name


def _output_paths(out: str, count: int) -> list[Path]:
    path = Path(out)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DLAInputError(f"--out '{out}' must end in one of {', '.join(IMAGE_SUFFIXES)}.")
    if not path.parent.exists():
        raise DLAInputError(f"The folder of --out '{out}' does not exist; create it first.")
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{index}{path.suffix}") for index in range(count)]


def bundled_reference_path() -> Path:
    """The reference image shipped inside the package (also in an installed, non-editable copy)."""
    return Path(str(resources.files("dla_core").joinpath(BUNDLED_REFERENCE)))


def _inputs(args: argparse.Namespace, embedded: bool) -> tuple[list[str], str, bool]:
    """Reference paths and prompt; the self-test falls back to the bundled ones. Returns (paths, prompt, bundled)."""
    if not embedded and (args.reference is None or args.prompt is None):
        missing = " and ".join(
            flag for flag, value in (("--reference", args.reference), ("--prompt", args.prompt)) if value is None
        )
        raise DLAInputError(
            f"With the model flags, give {missing}: the bundled reference and prompt are for the self-test only."
        )
    references = args.reference if args.reference is not None else [str(bundled_reference_path())]
    prompt = args.prompt if args.prompt is not None else BUNDLED_PROMPT
    return references, prompt, args.reference is None or args.prompt is None


def validate(args: argparse.Namespace) -> dict:
    """Check every argument (files, numbers, model flags) without loading a model; returns settings."""
    given = [flag for flag in MODEL_FLAGS if getattr(args, flag)]
    embedded = not given
    if given and len(given) != len(MODEL_FLAGS):
        missing = ", ".join(f"--{flag}" for flag in MODEL_FLAGS if flag not in given)
        raise DLAInputError(f"Give all four model flags or none (none = embedded random self-test); missing {missing}.")
    if embedded and (args.lora or args.flux_config):
        raise DLAInputError("--lora / --flux-config need the model flags --flux --vae --mllm --dla.")
    for flag in given:
        if not Path(getattr(args, flag)).exists():
            raise DLAInputError(f"--{flag} '{getattr(args, flag)}' does not exist. Check the path.")
    if args.lora and not Path(args.lora).is_file():
        raise DLAInputError(f"--lora '{args.lora}' does not exist. Give a .safetensors LoRA file.")
    if args.mllm and not (Path(args.mllm) / "config.json").is_file():
        raise DLAInputError(f"--mllm '{args.mllm}' has no config.json; give a Hugging Face MLLM folder.")

    reference_paths, prompt, bundled = _inputs(args, embedded)
    references = [load_reference_image(path) for path in reference_paths]
    to_pil_list(references)  # RGB, size
    size = EMBEDDED_SIZE if embedded else 1024
    width = args.width if args.width is not None else size
    height = args.height if args.height is not None else size
    steps = args.steps if args.steps is not None else (EMBEDDED_STEPS if embedded else 28)
    DLASubjectPipeline.check_inputs(
        prompt,
        references,
        height,
        width,
        steps,
        args.guidance,
        args.tau1,
        args.tau2,
        args.num_images,
        args.true_cfg,
        args.reference_method,
        args.reference_megapixels,
    )
    return dict(
        embedded=embedded,
        references=references,
        reference_paths=reference_paths,
        prompt=prompt,
        bundled=bundled,
        width=width,
        height=height,
        steps=steps,
        device=_resolve_device(args.device),
        outputs=_output_paths(args.out, args.num_images),
    )


# ---------------------------------------------------------------------- embedded models


def default_cache_dir() -> Path:
    """``$DLA_SUBJECT_CACHE`` or ``~/.cache/comfyui-dla-subject``."""
    root = os.environ.get("DLA_SUBJECT_CACHE") or Path.home() / ".cache" / "comfyui-dla-subject"
    return Path(root)


def embedded_folder_name(seed: int = 0) -> str:
    """Cache folder of the embedded models, keyed by the transformers major version that builds them.

    A tiny MLLM folder saved by transformers 5 does not load in transformers 4.x (its tokenizer_config.json
    lists ``extra_special_tokens`` in the 5.x format), so two environments sharing one cache each get their own.
    """
    import transformers

    major = transformers.__version__.split(".")[0]
    return f"selftest-v{EMBEDDED_VERSION}-transformers{major}-seed{seed}"


def build_embedded_models(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """Build (once) the embedded self-test models under ``folder``; returns their paths.

    Tiny InternVL, tiny diffusers FLUX transformer and VAE (:mod:`dla_core.selftest_models`),
    random DLA for that MLLM. Built in a temporary sibling folder and renamed into place, so a
    crash never leaves a half-built cache.
    """
    folder = Path(folder) / embedded_folder_name(seed)
    paths = {"flux": folder / "flux", "vae": folder / "vae", "mllm": folder / "mllm", "dla": folder / "dla.safetensors"}
    if (folder / "complete").is_file():
        return paths
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        build_tiny_internvl(staging / "mllm", seed=seed)
        build_tiny_diffusers_flux(staging / "flux", seed=seed)
        build_tiny_diffusers_vae(staging / "vae", seed=seed)
        save_dla(
            init_dla(read_mllm_spec(staging / "mllm"), target="flux", init="random", seed=seed),
            staging / "dla.safetensors",
        )
        (staging / "complete").write_text("embedded self-test models: tiny, random weights\n")
        if folder.exists():  # an incomplete leftover
            shutil.rmtree(folder)
        try:
            staging.rename(folder)
        except OSError:  # another process finished first
            if not (folder / "complete").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return paths


# ---------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    """Validate, load (or build the embedded models), generate, save; returns 0."""
    settings = validate(args)

    started = time.perf_counter()
    if settings["embedded"]:
        paths = build_embedded_models(args.cache_dir or default_cache_dir())
        flux, vae, mllm, dla = paths["flux"], paths["vae"], paths["mllm"], paths["dla"]
    else:
        flux, vae, mllm, dla = args.flux, args.vae, args.mllm, args.dla
    offload = {"auto": "auto", "none": None, "cpu": "cpu", "free": "free"}[args.offload_mllm]
    pipe = DLASubjectPipeline.from_pretrained(
        flux,
        vae,
        mllm,
        dla,
        lora=args.lora,
        lora_scale=args.lora_scale,
        flux_config=args.flux_config,
        dtype=args.dtype,
        mllm_dtype=args.mllm_dtype,
        device=settings["device"],
        offload_mllm=offload,
    )
    loaded = time.perf_counter()
    if settings["bundled"]:
        print(f"self-test input: reference {', '.join(settings['reference_paths'])}, prompt '{settings['prompt']}'")
    output = pipe(
        settings["prompt"],
        settings["references"],
        height=settings["height"],
        width=settings["width"],
        num_inference_steps=settings["steps"],
        guidance_scale=args.guidance,
        tau1=args.tau1,
        tau2=args.tau2,
        num_images=args.num_images,
        seed=args.seed,
        true_cfg_scale=args.true_cfg,
        reference_method=args.reference_method,
        reference_megapixels=args.reference_megapixels,
        mllm_image_size=args.mllm_image_size,
        progress=not args.no_progress,
    )
    for image, path in zip(output.images, settings["outputs"]):
        image.save(path)
    finished = time.perf_counter()
    print(f"schedule: {output.schedule}")
    print(
        f"wrote {', '.join(str(p) for p in settings['outputs'])} ({settings['width']}x{settings['height']}, "
        f"{settings['steps']} steps, seed {args.seed}); load {loaded - started:.1f}s, generate {finished - loaded:.1f}s"
    )
    if settings["embedded"]:
        print(RANDOM_WEIGHTS_NOTICE)
    return 0
