"""The standalone pipeline: the whole method on diffusers models, no ComfyUI.

:class:`DLASubjectPipeline` reads top to bottom like a diffusers pipeline::

    check_inputs -> encode (MLLM joint encode -> DLA) -> prepare_reference_latents (VAE)
    -> prepare_latents (seeded noise) -> staged denoising loop -> decode (VAE)

It makes the same choices as the ComfyUI nodes, so both give the same latents on the same
weights (tests/integration/test_pipeline_parity.py; FLUX.2: test_pipeline_parity_flux2.py, where the latents
are 128 channels at 1/16, the schedule is ``Flux2Scheduler``'s, references sit at their own time offsets and
there is no pooled vector: :mod:`dla_core.flux.flux2`, :mod:`dla_core.flux.flux2_sampling`). FLUX.1:

- noise: ``torch.randn`` of the whole latent batch ``[batch, 16, H/8, W/8]`` in float32 on
  the CPU from ``torch.Generator().manual_seed(seed)`` (ComfyUI's ``prepare_noise``);
- latents: the transformer works in model space ``(vae_latent - 0.1159) * 0.3611``
  (ComfyUI's ``process_latent_in`` for FLUX, diffusers' VAE ``shift_factor`` /
  ``scaling_factor``); :attr:`DLAPipelineOutput.latents` is in VAE space like a ComfyUI LATENT;
- references: aspect kept, area capped at ``reference_megapixels``, sides rounded to 16 px
  (:func:`dla_core.images.identity_resolution`, as the VAE Identity Encode node), encoded
  with the VAE's posterior mode, placed as extra image tokens (:mod:`dla_core.flux.references`);
- conditioning: DLA tokens with the padding stripped (:func:`dla_core.dla.strip_padding`),
  the DLA's pooled vector, FLUX distilled guidance (default 2.5) in every stage; stage 3 uses
  the DLA's learned null tokens and null pooled vector;
- sigmas: :func:`dla_core.flux.sampling.flux_sigmas` (ComfyUI: "simple" scheduler on a
  ModelSamplingFlux-patched model at the same size), Euler steps.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from .checkpoint import load_dla
from .checks import check_image_pixels, finite
from .dla import strip_padding
from .dtypes import DTYPES
from .errors import DLAInputError
from .flux import flux2_sampling
from .flux.flux2 import check_flux2_reference_method, encode_flux2_latent, require_flux2_diffusers
from .flux.flux2_weights import is_flux2_transformer, load_flux2_transformer, load_flux2_vae
from .flux.references import DEFAULT_REFERENCE_METHOD, flux_forward, normalize_reference_method
from .flux.sampling import (
    DEFAULT_GUIDANCE,
    LATENT_CHANNELS,
    VAE_SCALE_FACTOR,
    StagedConditioning,
    flux_sigmas,
    staged_euler_sample,
)
from .flux.weights import bfl_lora_to_diffusers, is_bfl_lora, load_flux_transformer, load_flux_vae
from .images import identity_resolution, to_pil_list
from .mllm import encode_joint, load_mllm
from .schedule import DEFAULT_TAU1, DEFAULT_TAU2, describe_schedule, validate_taus

DEFAULT_STEPS = 28
DEFAULT_SIZE = 1024
DEFAULT_REFERENCE_MEGAPIXELS = 1.0  # as the VAE Identity Encode node
SIZE_MULTIPLE = VAE_SCALE_FACTOR * 2  # 16 px: 8x VAE times 2x2 patches
MAX_SIZE = 8192
MAX_IMAGES = 64


def resolve_torch_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """``"auto"``/None -> bf16 on CUDA, fp32 elsewhere; names from :data:`DTYPES` or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return DTYPES[str(dtype)]
    except KeyError:
        raise DLAInputError(f"Unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}.") from None


def load_reference_image(path: str | Path) -> Image.Image:
    """Open an image file as given (mode unchanged, so RGBA / grayscale are reported, not converted)."""
    path = Path(path)
    if not path.is_file():
        raise DLAInputError(f"Reference image not found: {path}. Give the path of an RGB image file.")
    try:
        image = Image.open(path)  # reads the header only
    except Exception as exc:  # PIL raises many kinds
        raise DLAInputError(f"Cannot read reference image {path}: {exc}. Use a PNG/JPEG/WebP RGB image.") from None
    with image:
        check_image_pixels(f"Reference image {path}", *image.size)  # before decoding the pixels
        try:
            image.load()
            return image.copy()
        except Exception as exc:  # PIL raises many kinds
            raise DLAInputError(f"Cannot read reference image {path}: {exc}. Use a PNG/JPEG/WebP RGB image.") from None


def _pil_to_vae_input(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """RGB PIL -> [1, 3, height, width] in [-1, 1]; center-crops the aspect remainder, Lanczos resize."""
    if image.size != (width, height):
        src_w, src_h = image.size
        target_aspect = width / height
        if src_w / src_h > target_aspect:  # too wide: crop columns
            crop_w = round(src_h * target_aspect)
            left = (src_w - crop_w) // 2
            image = image.crop((left, 0, left + crop_w, src_h))
        elif src_w / src_h < target_aspect:
            crop_h = round(src_w / target_aspect)
            top = (src_h - crop_h) // 2
            image = image.crop((0, top, src_w, top + crop_h))
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 255.0  # [height, width, 3]
    return torch.from_numpy(array).permute(2, 0, 1)[None] * 2.0 - 1.0


def _latent_shape(family: str, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
    if family == "flux2":
        return flux2_sampling.flux2_latent_shape(batch, height, width)
    return (batch, LATENT_CHANNELS, height // VAE_SCALE_FACTOR, width // VAE_SCALE_FACTOR)


def latents_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """VAE output [batch, 3, H, W] in [-1, 1] -> PIL images (clamped, rounded like ComfyUI's SaveImage)."""
    array = ((images.float().clamp(-1, 1) + 1.0) / 2.0).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.clip(frame * 255.0, 0, 255).astype(np.uint8)) for frame in array]


@dataclass
class DLAPipelineOutput:
    """Result of :meth:`DLASubjectPipeline.__call__`.

    ``images``: PIL images (empty when ``output_type="latent"``); ``latents``: final latents
    [batch, 16, H/8, W/8] in VAE space (what a ComfyUI LATENT holds); ``sigmas``: the
    schedule (steps + 1); ``stages``: stage (1/2/3) of every step; ``schedule``: a summary.
    """

    images: list
    latents: torch.Tensor
    sigmas: torch.Tensor
    stages: list[int]
    schedule: str
    reference_sizes: list[tuple[int, int]] = field(default_factory=list)


class DLASubjectPipeline:
    """MLLM joint encoding -> DLA -> FLUX with reference latents and the three-stage schedule -> VAE.

    Components: ``transformer`` (diffusers ``FluxTransformer2DModel``), ``vae``
    (``AutoencoderKL`` with FLUX's 16-channel latent, ``scaling_factor``/``shift_factor``
    set), ``mllm`` (:class:`dla_core.mllm.LoadedMLLM`), ``dla``
    (:class:`dla_core.dla.DualLayerAggregation`). ``device`` is where the transformer, VAE
    and DLA run; the MLLM runs wherever it is and ``offload_mllm`` says what happens to it
    after encoding ("cpu": moved to the CPU, "free": dropped, None: left in place).
    """

    def __init__(
        self, transformer, vae, mllm, dla, device: str | torch.device = "cpu", offload_mllm: str | None = None
    ):
        if offload_mllm not in (None, "cpu", "free"):
            raise DLAInputError(f"offload_mllm must be None, 'cpu' or 'free', got {offload_mllm!r}.")
        self.transformer = transformer
        self.vae = vae
        self.mllm = mllm
        self.dla = dla
        self.device = torch.device(device)
        self.offload_mllm = offload_mllm
        # FLUX.2 ([klein], [dev]): 128-channel latents at 1/16, its own schedule and forward (dla_core.flux.flux2*).
        self.family = "flux2" if type(transformer).__name__ == "Flux2Transformer2DModel" else "flux"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        flux: str | Path,
        vae: str | Path,
        mllm: str | Path,
        dla: str | Path,
        lora: str | Path | None = None,
        lora_scale: float = 1.0,
        flux_config: str | Path | None = None,
        dtype: str | torch.dtype | None = "auto",
        mllm_dtype: str | torch.dtype = "auto",
        device: str | torch.device = "cpu",
        offload_mllm: str | None = "auto",
    ) -> "DLASubjectPipeline":
        """Load every component from local paths (no network).

        ``flux``: a diffusers transformer folder (or a pipeline folder with ``transformer/``),
        or a single-file checkpoint (BFL / ComfyUI layout; its config is inferred or read from
        ``flux_config``). ``vae``: a diffusers AutoencoderKL folder or ``ae.safetensors``.
        ``mllm``: a Hugging Face MLLM folder. ``dla``: a DLA ``.safetensors``. ``lora``: an
        optional LoRA ``.safetensors`` for the transformer (diffusers/peft, kohya or ComfyUI
        keys). ``offload_mllm="auto"`` moves the MLLM to the CPU after encoding when
        ``device`` is not the CPU.
        """
        for name, path in (("FLUX transformer", flux), ("VAE", vae), ("MLLM folder", mllm), ("DLA checkpoint", dla)):
            if not Path(path).exists():
                raise DLAInputError(
                    f"{name} not found: {path}. Check the path (models are read from local files only)."
                )
        if lora is not None and not Path(lora).is_file():
            raise DLAInputError(f"LoRA file not found: {lora}. Give a .safetensors LoRA file.")
        torch_dtype = resolve_torch_dtype(dtype, device)
        flux2 = is_flux2_transformer(flux)
        if flux2:
            require_flux2_diffusers()  # before anything loads
        load_transformer = load_flux2_transformer if flux2 else partial(load_flux_transformer, config=flux_config)
        transformer = load_transformer(flux, dtype=torch_dtype).to(device).eval()
        transformer.requires_grad_(False)
        load_vae = load_flux2_vae if flux2 else load_flux_vae
        vae_model = (
            load_vae(vae, dtype=torch.float32 if torch_dtype == torch.float16 else torch_dtype).to(device).eval()
        )
        vae_model.requires_grad_(False)
        loaded_mllm = load_mllm(mllm, dtype=mllm_dtype, device=device)
        dla_module = load_dla(dla, device=device, dtype=torch.float32)
        if offload_mllm == "auto":
            offload_mllm = None if torch.device(device).type == "cpu" else "cpu"
        pipe = cls(transformer, vae_model, loaded_mllm, dla_module, device=device, offload_mllm=offload_mllm)
        if lora is not None:
            pipe.load_lora(lora, scale=lora_scale)
        return pipe

    def load_lora(self, path: str | Path, scale: float = 1.0, adapter_name: str = "dla_lora") -> None:
        """Apply a LoRA ``.safetensors`` to the transformer (peft), with strength ``scale``.

        Accepts diffusers/peft keys (``transformer.<module>.lora_A.weight``) and the
        non-diffusers formats diffusers converts (kohya ``lora_unet_*``, ComfyUI / BFL
        ``diffusion_model.*.lora_up/lora_down``).
        """
        from diffusers import FluxPipeline

        path = Path(path)
        if not path.is_file():
            raise DLAInputError(f"LoRA file not found: {path}. Give a .safetensors LoRA file.")
        if path.suffix.lower() != ".safetensors":
            raise DLAInputError(
                f"LoRA '{path.name}' is not a .safetensors file; only safetensors are loaded (never pickles)."
            )
        try:
            raw = load_file(str(path))
            if is_bfl_lora(raw):  # ComfyUI / BFL names: converted here at any width (diffusers' path fixes 3072)
                config = self.transformer.config
                state_dict = bfl_lora_to_diffusers(raw, hidden=config.num_attention_heads * config.attention_head_dim)
            else:
                state_dict = FluxPipeline.lora_state_dict(str(path))
            if isinstance(state_dict, tuple):
                state_dict = state_dict[0]
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("text_encoder.")}
            if not any(k.startswith("transformer.") for k in state_dict):
                state_dict = {f"transformer.{k}": v for k, v in state_dict.items()}
            self.transformer.load_lora_adapter(state_dict, prefix="transformer", adapter_name=adapter_name)
        except DLAInputError:
            raise
        except Exception as exc:
            raise DLAInputError(f"Cannot apply LoRA '{path.name}' to this FLUX transformer: {exc}") from exc
        self.transformer.set_adapters([adapter_name], weights=[scale])

    # ------------------------------------------------------------------ steps
    @staticmethod
    def check_inputs(
        prompt: str,
        references,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        tau1: float,
        tau2: float,
        num_images: int = 1,
        true_cfg_scale: float = 1.0,
        reference_method: str = DEFAULT_REFERENCE_METHOD,
        reference_megapixels: float = DEFAULT_REFERENCE_MEGAPIXELS,
    ) -> None:
        """Validate every argument before any model runs; raises :class:`DLAInputError`."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise DLAInputError("The prompt is empty. Describe what to generate, e.g. 'the dog on a beach'.")
        to_pil_list(references)
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value < SIZE_MULTIPLE or value > MAX_SIZE or value % SIZE_MULTIPLE:
                raise DLAInputError(
                    f"{name} must be a multiple of {SIZE_MULTIPLE} between {SIZE_MULTIPLE} and {MAX_SIZE} px, got "
                    f"{value!r}."
                )
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise DLAInputError(f"steps must be at least 1, got {num_inference_steps!r}.")
        finite("guidance", guidance_scale, hint=f"(paper: {DEFAULT_GUIDANCE})")
        finite("true_cfg_scale", true_cfg_scale, low=1.0, hint="1 = off.")
        finite("reference_megapixels", reference_megapixels)
        if not (0.0 <= float(guidance_scale) <= 100.0):
            raise DLAInputError(
                f"guidance must be between 0 and 100 (paper: {DEFAULT_GUIDANCE}), got {guidance_scale}."
            )
        if float(true_cfg_scale) < 1.0:
            raise DLAInputError(f"true_cfg_scale must be 1 (off) or more, got {true_cfg_scale}.")
        if not isinstance(num_images, int) or not (1 <= num_images <= MAX_IMAGES):
            raise DLAInputError(f"num_images must be between 1 and {MAX_IMAGES}, got {num_images!r}.")
        validate_taus(tau1, tau2)
        normalize_reference_method(reference_method)
        identity_resolution(64, 64, reference_megapixels)  # range check only

    @torch.no_grad()
    def encode(self, prompt: str, references: list, mllm_image_size: int | None = None):
        """MLLM joint encode + DLA: returns (tokens [1, T, 4096], pooled [1, 768], null tokens, null pooled)."""
        if self.mllm is None:
            raise DLAInputError(
                "The MLLM was freed after the last call (offload_mllm='free'); load the pipeline again."
            )
        features = encode_joint(self.mllm, prompt, references, image_size=mllm_image_size)
        self._after_encode()
        return self.condition(features)

    @torch.no_grad()
    def condition(self, features):
        """DLA of MLLM features (one prompt): the (tokens, pooled, null tokens, null pooled) of :meth:`encode`."""
        conditioning = self.dla(features.to(device=self.device))
        null = self.dla.null_conditioning(1)
        tokens = strip_padding(conditioning.tokens, conditioning.token_mask)  # [1, tokens, 4096]
        null_tokens = strip_padding(null.tokens, null.token_mask)  # [1, null_length, 4096]
        pooled = None if conditioning.pooled is None else conditioning.pooled.float()  # FLUX.2: none
        null_pooled = None if null.pooled is None else null.pooled.float()
        return tokens.float(), pooled, null_tokens.float(), null_pooled

    def _after_encode(self) -> None:
        if self.offload_mllm == "cpu":
            self.mllm.model.to("cpu")
        elif self.offload_mllm == "free":
            self.mllm = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    @torch.no_grad()
    def prepare_reference_latents(
        self, references: list[Image.Image], megapixels: float = DEFAULT_REFERENCE_MEGAPIXELS
    ):
        """VAE-encode every reference at its identity resolution: model-space latents [1, 16, h, w] each."""
        latents, sizes = [], []
        vae_dtype = self.vae.dtype
        for image in references:
            width, height = identity_resolution(image.width, image.height, megapixels)
            pixels = _pil_to_vae_input(image, width, height).to(self.device, vae_dtype)
            if self.family == "flux2":  # [128, h/16, w/16], normalised: model space = ComfyUI's LATENT
                latents.append(encode_flux2_latent(self.vae, pixels[0]).to(self.device)[None])
            else:
                raw = self.vae.encode(pixels).latent_dist.mode()  # [1, 16, h, w], VAE space
                latents.append(self.to_model_space(raw.float()))
            sizes.append((width, height))
        return latents, sizes

    def to_model_space(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE-space latent -> what the transformer sees (ComfyUI's ``process_latent_in``; FLUX.2: the same)."""
        if self.family == "flux2":
            return latents
        config = self.vae.config
        return (latents - (config.shift_factor or 0.0)) * config.scaling_factor

    def to_vae_space(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_model_space` (ComfyUI's ``process_latent_out``)."""
        if self.family == "flux2":
            return latents
        config = self.vae.config
        return latents / config.scaling_factor + (config.shift_factor or 0.0)

    @staticmethod
    def prepare_latents(batch: int, height: int, width: int, seed: int, family: str = "flux") -> torch.Tensor:
        """Initial noise [batch, 16, height/8, width/8] (FLUX.2: [batch, 128, height/16, width/16]), float32, CPU
        generator (as ComfyUI's ``prepare_noise``)."""
        generator = torch.Generator("cpu").manual_seed(int(seed))
        shape = _latent_shape(family, batch, height, width)
        return torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu")

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Model-space latents -> PIL images."""
        if self.family == "flux2":
            return latents_to_pil(flux2_sampling.decode_flux2_latent(self.vae, latents.to(self.device)))
        raw = self.to_vae_space(latents).to(self.device, self.vae.dtype)
        return latents_to_pil(self.vae.decode(raw).sample)

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        references,
        height: int = DEFAULT_SIZE,
        width: int = DEFAULT_SIZE,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        tau1: float = DEFAULT_TAU1,
        tau2: float = DEFAULT_TAU2,
        num_images: int = 1,
        seed: int = 0,
        latents: torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        true_cfg_scale: float = 1.0,
        reference_method: str | None = None,
        reference_megapixels: float = DEFAULT_REFERENCE_MEGAPIXELS,
        mllm_image_size: int | None = None,
        features=None,
        output_type: str = "pil",
        progress: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> DLAPipelineOutput:
        """Generate ``num_images`` images of the subject in ``references`` following ``prompt``.

        ``references``: PIL image(s), IMAGE tensor(s) [batch, H, W, 3] in 0..1, or file paths;
        all references go to every image. ``latents``: optional initial noise
        [num_images, 16, height/8, width/8] replacing the seeded noise. ``sigmas``: optional
        schedule (steps + 1 values ending in 0) replacing FLUX's shifted one.
        ``features``: the MLLM's features of this prompt and these references, computed before (training's
        validation images reuse them while the DLA changes); the MLLM is then not run.
        ``output_type``: "pil" or "latent" (skip decoding). ``reference_method``: None = the family's
        (FLUX.1 ``offset``, FLUX.2 ``index``, the only one FLUX.2 takes).
        """
        references = self._load_references(references)
        if reference_method is None:  # the family's: FLUX.1 offset (as FLUX Kontext), FLUX.2 index (its own)
            reference_method = "index" if self.family == "flux2" else DEFAULT_REFERENCE_METHOD
        self.check_inputs(
            prompt,
            references,
            height,
            width,
            num_inference_steps,
            guidance_scale,
            tau1,
            tau2,
            num_images,
            true_cfg_scale,
            reference_method,
            reference_megapixels,
        )
        if output_type not in ("pil", "latent"):
            raise DLAInputError(f"output_type must be 'pil' or 'latent', got {output_type!r}.")
        reference_images = to_pil_list(references)
        sigma_list = self._sigmas(sigmas, height, width, num_inference_steps, self.family)
        expected_shape = _latent_shape(self.family, num_images, height, width)
        if latents is not None and tuple(latents.shape) != expected_shape:
            raise DLAInputError(f"latents have shape {tuple(latents.shape)}; expected {expected_shape}.")
        if self.family == "flux2":
            check_flux2_reference_method(reference_method)

        # 1. Encode: MLLM reads prompt + references jointly, the DLA aggregates all layers.
        if features is None:
            tokens, pooled, null_tokens, null_pooled = self.encode(prompt.strip(), reference_images, mllm_image_size)
        else:
            tokens, pooled, null_tokens, null_pooled = self.condition(features)
        # 2. Reference latents for the identity stages.
        reference_latents, reference_sizes = self.prepare_reference_latents(reference_images, reference_megapixels)
        # 3. Noise (sigma_0 = 1 for FLUX's schedule, so the start latent is the noise scaled by it).
        if latents is None:
            noise = self.prepare_latents(num_images, height, width, seed, self.family)
        else:
            noise = latents.float().cpu()
        start = (noise * float(sigma_list[0])).to(self.device)
        conditioning = StagedConditioning(
            tokens=tokens.expand(num_images, -1, -1),
            pooled=None if pooled is None else pooled.expand(num_images, -1),
            null_tokens=null_tokens.expand(num_images, -1, -1),
            null_pooled=None if null_pooled is None else null_pooled.expand(num_images, -1),
            reference_latents=reference_latents,
            reference_method=normalize_reference_method(reference_method),
        )
        # 4. Staged denoising.
        final, stages = staged_euler_sample(
            self.transformer,
            start,
            sigma_list.to(self.device),
            conditioning,
            tau1,
            tau2,
            guidance=guidance_scale,
            true_cfg_scale=true_cfg_scale,
            progress=progress,
            callback=callback,
            forward=flux2_sampling.flux2_loop_forward if self.family == "flux2" else flux_forward,
        )
        # 5. Decode.
        images = self.decode(final) if output_type == "pil" else []
        return DLAPipelineOutput(
            images=images,
            latents=self.to_vae_space(final).cpu(),
            sigmas=sigma_list.cpu(),
            stages=stages,
            schedule=describe_schedule(sigma_list, tau1, tau2),
            reference_sizes=reference_sizes,
        )

    @staticmethod
    def _load_references(references):
        items = references if isinstance(references, (list, tuple)) else [references]
        return [load_reference_image(item) if isinstance(item, (str, Path)) else item for item in items]

    @staticmethod
    def _sigmas(sigmas, height: int, width: int, steps: int, family: str = "flux") -> torch.Tensor:
        if sigmas is None:
            schedule = flux2_sampling.flux2_sigmas if family == "flux2" else flux_sigmas
            return schedule(height, width, steps)
        values = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
        if values.numel() < 2 or float(values[-1]) != 0.0 or bool((values[1:] > values[:-1]).any()):
            raise DLAInputError("sigmas must be a non-increasing list of at least 2 values ending in 0.")
        return values
