"""The method at the sizes users run it: InternVL3-8B + DLA + FLUX.1-dev, random weights, one GPU.

Performance does not depend on the weights' values, so random weights at the real shapes
measure what users will see. Everything is built on the device in bf16 and runs through the
code users hit: ``dla_core`` for the MLLM joint encode and the DLA, and inside ComfyUI (started
in this process with the pack loaded as a custom node) ComfyUI's own FLUX model class, built by
``comfy.sd.load_diffusion_model_state_dict`` from a state dict of the real key layout, ComfyUI's
VAE, ``nodes.common_ksampler`` and the pack's node functions. Only file reading is skipped.

Measured, side by side in one run:

* MLLM joint encode, InternVL3-8B shape (InternViT-300M + a 28-layer, 3584-wide Qwen2.5 LM;
  one 448 px reference = 256 image tokens, a 60-token prompt): ``encode_joint`` capturing all
  29 layers vs the plain backbone forward of the same inputs. Time of the backbone alone (forward
  hooks on ``model.model``) and of the whole call, peak memory. Goal: capture <= 1.05x forward.
* DLA forward on those features (default config and ``--pool weighted``; fp32, the DLA node's
  dtype, and bf16): time per encode, parameters, memory.
* FLUX.1-dev shape (19 double + 38 single blocks, 3072 wide), 1024x1024, 28 euler steps, one
  1024x1024 reference (4096 tokens): staged (tau .95/.85) vs native KSampler with the reference at
  every step vs native without reference, and staged tau 0/0 (must equal native bit for bit).
  Goals: staged <= 0.92x reference-at-every-step; staged tau 0/0 <= 1.01x native.
* The paper pipeline end to end (joint encode -> DLA -> VAE identity -> staged KSampler -> VAE
  decode) through the pack's node functions and ComfyUI's model management: seconds per image and
  peak memory warm (models resident) and cold (every model starts on the offload device), then
  cold on a simulated 24 GB card: ``comfy.model_management.EXTRA_RESERVED_VRAM`` set to the
  card's memory minus 24 GiB, which is what ``--reserve-vram`` sets at start, so ComfyUI offloads
  and partially loads as it would on a 24 GB card.

Memory: on a GPU ``torch.cuda.max_memory_allocated`` (PyTorch's caching allocator; ComfyUI is
started without ``main.py``, so neither cudaMallocAsync nor 0.33's DynamicVRAM is on: this is
ComfyUI's estimate-based loader, as with ``--disable-dynamic-vram``). On the CPU the figures are
the process RSS sampled every few ms (marked ``cpu_rss``): an approximation, for the CI run only.

    python bench/gpu_real_scale.py --comfyui PATH --out results.json      # real sizes, CUDA
    python bench/gpu_real_scale.py --tiny --device cpu --comfyui PATH     # tiny sizes (CI)

Prints one table and writes JSON with the device, versions and every figure. Goals are reported,
never enforced; whether outputs stayed finite is recorded (speed does not depend on it).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import gc
import importlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_DIR_NAME = "comfyui-dla-subject"
MIB = 2**20
GIB = 2**30

GUIDANCE = 2.5  # the paper's FLUX distilled guidance
SEED = 7
TAU_PAPER = (0.95, 0.85)
SAMPLER, SCHEDULER = "euler", "simple"
GOALS = {"capture_vs_forward": 1.05, "staged_vs_reference_every_step": 0.92, "staged_tau0_vs_native": 1.01}
PROMPT_TEXT = "the dog from the picture running on a sunny beach, golden hour, shallow depth of field, photo "


@dataclass(frozen=True)
class Scale:
    """Every size the bench uses. ``REAL``: InternVL3-8B and FLUX.1-dev; ``TINY``: seconds on a CPU."""

    name: str
    # InternVL3-8B: InternViT-300M-448px vision tower + Qwen2.5-7B language model
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    vocab: int | None  # None: the tiny tokenizer's own size
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    tile: int  # px of one InternVL tile; the reference is read at this size (one tile)
    prompt_tokens: int
    # FLUX.1-dev
    flux_hidden: int
    double_blocks: int
    single_blocks: int
    image_side: int  # px of the generated image
    reference_side: int  # px of the reference (VAE identity at its own size)
    steps: int
    # repeats: median of timed runs, after ``warmup`` untimed ones (FLUX and pipeline; MLLM and DLA always warm up)
    mllm_repeats: int
    dla_repeats: int
    flux_repeats: int
    warmup: int


REAL = Scale(
    name="real",
    text_hidden=3584,
    text_layers=28,
    text_heads=28,
    text_kv_heads=4,
    text_intermediate=18944,
    vocab=151674,
    vision_hidden=1024,
    vision_layers=24,
    vision_heads=16,
    vision_intermediate=4096,
    tile=448,
    prompt_tokens=60,
    flux_hidden=3072,
    double_blocks=19,
    single_blocks=38,
    image_side=1024,
    reference_side=1024,
    steps=28,
    mllm_repeats=5,
    dla_repeats=10,
    flux_repeats=2,
    warmup=1,
)
TINY = Scale(
    name="tiny",
    text_hidden=64,
    text_layers=2,
    text_heads=4,
    text_kv_heads=2,
    text_intermediate=128,
    vocab=None,
    vision_hidden=16,
    vision_layers=1,
    vision_heads=2,
    vision_intermediate=32,
    tile=56,
    prompt_tokens=16,
    flux_hidden=256,
    double_blocks=1,
    single_blocks=1,
    image_side=64,
    reference_side=32,
    steps=3,
    mllm_repeats=2,
    dla_repeats=2,
    flux_repeats=1,
    warmup=0,
)
TINY_FLUX_NARROW = 256  # ComfyUI >= 0.4 derives FLUX's width from the weights; 0.3.x fixes 3072


# ----------------------------------------------------------------------------- measuring
def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of a ``with`` block: CUDA ``max_memory_allocated``, or on the CPU the sampled process RSS."""

    def __init__(self, device):
        import torch

        self.torch = torch
        self.cuda = torch.device(device).type == "cuda"
        self.kind = "cuda_max_allocated" if self.cuda else "cpu_rss"
        self.before = self.peak = 0

    def __enter__(self):
        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.before = self.torch.cuda.memory_allocated()
            return self
        self.before = self.peak = _rss()
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def _sample(self):
        while not self._done.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.peak = self.torch.cuda.max_memory_allocated()
        else:
            self._done.set()
            self._sampler.join()
            self.peak = max(self.peak, _rss())
        return False

    def figures(self) -> dict:
        return {"peak_mib": self.peak / MIB, "peak_delta_mib": (self.peak - self.before) / MIB}


def finite(tensor) -> bool:
    """All values finite. Random weights at full depth could overflow; speed would not change, so it is recorded."""
    import torch

    return bool(torch.isfinite(tensor.float()).all())


def bit_equal(a, b) -> bool:
    """Same shape, dtype and bits (NaN where the other has NaN counts as equal)."""
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    """``(seconds, result)`` of one call, the device synchronised before and after."""
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return time.perf_counter() - start, result


def measure(fn, device, repeats: int, warmup: int = 1) -> tuple[dict, object]:
    """Median time of ``repeats`` calls after ``warmup`` ones; memory of the last call. Returns (figures, result)."""
    for _ in range(warmup):
        fn()
    times, result = [], None
    for index in range(repeats):
        if index == repeats - 1:
            with PeakMemory(device) as memory:
                seconds, result = timed(fn, device)
        else:
            seconds, result = timed(fn, device)
        times.append(seconds)
    return {"seconds": statistics.median(times), "runs": times, **memory.figures()}, result


# ----------------------------------------------------------------------------- ComfyUI in this process
def start_comfyui(comfy_path: Path, device: str) -> tuple[object, callable]:
    """Start ComfyUI in this process with the pack as a custom node; returns (ComfyUI's nodes, pack-module getter)."""
    base = Path(tempfile.mkdtemp(prefix="dla-gpu-bench-comfy-"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)  # nothing left in the temp folder after a run
    for sub in ("custom_nodes", "models/dla", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    sys.path.insert(0, str(comfy_path))
    sys.argv = ["main.py", "--base-directory", str(base), "--disable-api-nodes"]
    if device == "cpu":
        sys.argv.append("--cpu")
    import comfy.options

    comfy.options.enable_args_parsing()
    import folder_paths  # noqa: F401  (reads --base-directory at import)

    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    loader = nodes.NODE_CLASS_MAPPINGS.get("DLAMLLMLoader")
    if loader is None:
        raise SystemExit(f"ComfyUI at {comfy_path} did not load the pack from {REPO_ROOT}; see the log above.")
    package = loader.__module__.rsplit(".nodes.", 1)[0]  # ComfyUI names the pack's package by its path

    def pack(name: str):
        return importlib.import_module(f"{package}.{name}")

    return nodes, pack


def tiny_flux_builders():
    """The test suite's ComfyUI-layout tiny FLUX builders (tests/lib/dla_tiny/flux.py; they import no pack module)."""
    lib = str(REPO_ROOT / "tests" / "lib")
    if lib not in sys.path:
        sys.path.append(lib)
    return importlib.import_module("dla_tiny.flux")


def tiny_flux_width(pack) -> int:
    """The narrowest FLUX this ComfyUI builds: asks its own detection whether it reads the width from the weights."""
    import comfy.model_detection
    import torch

    narrow = tiny_flux_builders().tiny_flux_state_dict(dtype=torch.float32, hidden=TINY_FLUX_NARROW)
    config = comfy.model_detection.model_config_from_unet(narrow, "")
    derived = config is not None and config.unet_config.get("hidden_size") == TINY_FLUX_NARROW
    return TINY_FLUX_NARROW if derived else REAL.flux_hidden


# ----------------------------------------------------------------------------- models
def build_mllm(pack, scale: Scale, device, dtype, folder: Path):
    """InternVL at ``scale``'s shape with random weights, built on ``device``: a ``LoadedMLLM``.

    The tiny builder writes the processor, chat template and config layout; the config is then
    resized to the target shape and the model constructed from it directly on the device (no
    16 GB checkpoint is written or read).
    """
    import torch
    from transformers import AutoConfig, AutoProcessor, InternVLForConditionalGeneration

    pack("dla_core.selftest_models").build_tiny_internvl(folder, image_size=scale.tile, max_tiles=1)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    text, vision = config["text_config"], config["vision_config"]
    text.update(
        hidden_size=scale.text_hidden,
        num_hidden_layers=scale.text_layers,
        num_attention_heads=scale.text_heads,
        num_key_value_heads=scale.text_kv_heads,
        intermediate_size=scale.text_intermediate,
    )
    text.pop("head_dim", None)  # derived from hidden size / heads
    if "layer_types" in text:
        text["layer_types"] = ["full_attention"] * scale.text_layers
    if scale.vocab is not None:
        text["vocab_size"] = scale.vocab
        text["max_position_embeddings"] = 32768
    vision.update(
        hidden_size=scale.vision_hidden,
        num_hidden_layers=scale.vision_layers,
        num_attention_heads=scale.vision_heads,
        intermediate_size=scale.vision_intermediate,
    )
    config["tie_word_embeddings"] = False
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")

    model_config = AutoConfig.from_pretrained(folder, attn_implementation="sdpa")  # what load_mllm gets by default
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = InternVLForConditionalGeneration(model_config)
    finally:
        torch.set_default_dtype(previous)
    model.eval().requires_grad_(False)
    mllm = pack("dla_core.mllm")
    spec = pack("dla_core.spec").read_mllm_spec(folder)
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    name = "InternVL3-8B shape, random weights" if scale.name == "real" else "tiny InternVL, random weights"
    return mllm.LoadedMLLM(model=model, processor=processor, spec=spec, dtype=dtype, name=name, folder=folder)


def reference_image(side: int):
    """A smooth random RGB IMAGE tensor [1, side, side, 3] in 0..1 (non-trivial for the VAE and the MLLM)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    axis = torch.linspace(0, 1, side)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    phases = torch.rand(3, generator=generator) * 2 * math.pi
    channels = [0.5 + 0.4 * torch.sin(6 * x + 4 * y + phase) for phase in phases]
    return torch.stack(channels, dim=-1)[None]  # [1, side, side, 3]


def prompt_of(processor, tokens: int) -> str:
    """A prompt of exactly ``tokens`` tokens for this tokenizer, no outer spaces (encode_joint strips them)."""
    text = PROMPT_TEXT * (tokens // 4 + 2)
    for length in range(1, len(text) + 1):
        candidate = text[:length].strip()
        if len(processor.tokenizer(candidate, add_special_tokens=False)["input_ids"]) == tokens:
            return candidate
    raise RuntimeError(f"no prefix of the prompt text has exactly {tokens} tokens")


class BackboneTimer:
    """Seconds spent in ``model.model`` (the multimodal backbone) per call, via forward hooks."""

    def __init__(self, backbone, device):
        self.device = device
        self.seconds: list[float] = []
        self._start = 0.0
        self._handles = [
            backbone.register_forward_pre_hook(self._before),
            backbone.register_forward_hook(self._after),
        ]

    def _before(self, module, args):
        _sync(self.device)
        self._start = time.perf_counter()

    def _after(self, module, args, output):
        _sync(self.device)
        self.seconds.append(time.perf_counter() - self._start)

    def remove(self):
        for handle in self._handles:
            handle.remove()


# ----------------------------------------------------------------------------- phases
def bench_mllm(pack, mllm, scale: Scale, device, reference) -> tuple[dict, object]:
    """encode_joint (all layers captured) vs processor + plain backbone forward on the same reference and prompt."""
    import torch

    mllm_mod, images = pack("dla_core.mllm"), pack("dla_core.images")
    processor = mllm.processor
    prompt = prompt_of(processor, scale.prompt_tokens)

    def capture():
        return mllm_mod.encode_joint(mllm, prompt, reference, image_size=scale.tile)

    def plain():
        # What any encoder of this chat turn runs: the same template, processor and backbone, nothing captured.
        pil = images.resize_for_mllm(images.to_pil_list(reference)[0], max_side=scale.tile)
        content = [{"type": "image"}, {"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        encoded = processor(text=[text], images=[pil], return_tensors="pt", max_patches=1)
        inputs = {key: encoded[key].to(mllm.device) for key in ("input_ids", "attention_mask", "pixel_values")}
        with torch.inference_mode():
            return mllm.model.model(**inputs, use_cache=False).last_hidden_state

    timer = BackboneTimer(mllm.model.model, device)
    results = {}
    try:
        for name, fn in (("forward", plain), ("capture", capture)):
            fn()  # warm-up
        for name, fn in (("forward", plain), ("capture", capture)):
            timer.seconds.clear()
            figures, output = measure(fn, device, scale.mllm_repeats, warmup=0)
            figures["backbone_seconds"] = statistics.median(timer.seconds)
            results[name] = figures
            if name == "capture":
                features = output
    finally:
        timer.remove()
    hidden = features.hidden_states  # [batch, layers, tokens, width]
    tokens = int(hidden.shape[2])
    return {
        "model": mllm.name,
        "outputs_finite": finite(hidden),
        "layers_captured": int(hidden.shape[1]),
        "width": int(hidden.shape[3]),
        "tokens": tokens,
        "image_tokens": int(features.image_mask.sum()),
        "prompt_tokens": int(features.text_mask.sum()),
        "captured_mib": hidden.numel() * hidden.element_size() / MIB,
        "parameters": sum(p.numel() for p in mllm.model.parameters()),
        "dtype": str(mllm.dtype).replace("torch.", ""),
        "plain_forward": results["forward"],
        "capture": results["capture"],
        "ratio_backbone": results["capture"]["backbone_seconds"] / results["forward"]["backbone_seconds"],
        "ratio_call": results["capture"]["seconds"] / results["forward"]["seconds"],
    }, features


def bench_dla(pack, spec, features, scale: Scale, device) -> list[dict]:
    """DLA forward on the captured features: default (flatten) and weighted pool, fp32 (the node's dtype) and bf16."""
    import torch

    init_dla = pack("dla_core.checkpoint").init_dla
    rows = []
    for pool in ("flatten", "weighted"):
        for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            dla = init_dla(spec, target="flux", lap_pool=pool, seed=0).eval().requires_grad_(False).to(device, dtype)
            weights = sum(p.numel() * p.element_size() for p in dla.parameters())

            def forward(dla=dla):
                with torch.inference_mode():
                    return dla(features)

            figures, output = measure(forward, device, scale.dla_repeats)
            rows.append(
                {
                    "pool": pool,
                    "dtype": dtype_name,
                    "parameters": dla.num_parameters(),
                    "weights_mib": weights / MIB,
                    "output_tokens": int(output.tokens.shape[1]),
                    "outputs_finite": finite(output.tokens),
                    **figures,
                }
            )
            del dla, output
            gc.collect()
    return rows


def build_flux(pack, scale: Scale, device):
    """FLUX.1 at ``scale`` as ComfyUI's UNETLoader builds it, from a state dict of random weights (BFL layout)."""
    import comfy.sd
    import torch

    state = tiny_flux_builders().tiny_flux_state_dict(
        seed=0,
        dtype=torch.bfloat16,
        double_blocks=scale.double_blocks,
        single_blocks=scale.single_blocks,
        hidden=scale.flux_hidden,
        device=device,
    )
    parameters = sum(tensor.numel() for tensor in state.values())
    model = comfy.sd.load_diffusion_model_state_dict(state)
    if model is None:
        raise RuntimeError("ComfyUI did not detect the random FLUX state dict as a diffusion model")
    del state
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return model, parameters


def build_vae(pack):
    """FLUX's VAE (ae.safetensors layout, full size) as ComfyUI's VAELoader builds it, random weights."""
    import comfy.sd

    return comfy.sd.VAE(sd=tiny_flux_builders().tiny_flux_vae_state_dict(seed=0))


class Pipeline:
    """The paper pipeline through the pack's node functions (the loaders' outputs built in memory)."""

    def __init__(self, comfy_nodes, pack, mllm_handle, dla_handle, vae, model, scale: Scale, reference, prompt):
        import torch

        self.comfy_nodes, self.pack, self.scale = comfy_nodes, pack, scale
        self.mllm_nodes, self.dla_nodes = pack("nodes.mllm_nodes"), pack("nodes.dla_nodes")
        self.identity_nodes, self.sampler_nodes = pack("nodes.identity_nodes"), pack("nodes.sampler_nodes")
        self.staged_guider = pack("nodes.staged_guider")
        self.mllm_handle, self.dla_handle, self.vae, self.model = mllm_handle, dla_handle, vae, model
        self.reference, self.prompt = reference, prompt
        side = scale.image_side
        self.latent = {"samples": torch.zeros(1, 16, side // 8, side // 8)}  # EmptySD3LatentImage

    def conditioning(self):
        """(positive, identity): MLLM Joint Encode -> Dual Layer Aggregation; VAE Identity Encode, reference's size."""
        references = [self.reference]
        features = self.mllm_nodes.encode_with_managed_mllm(self.mllm_handle, self.prompt, references, self.scale.tile)
        positive = self.dla_nodes.aggregate_to_conditioning(self.dla_handle, features, GUIDANCE)
        identity = self.identity_nodes.encode_identity(self.vae, [self.reference], 0.0, False, "offset")
        return positive, identity

    def native(self, conditioning):
        return self.comfy_nodes.common_ksampler(
            self.model, SEED, self.scale.steps, 1.0, SAMPLER, SCHEDULER, conditioning, conditioning, self.latent
        )[0]

    def staged(self, positive, identity, tau1, tau2):
        settings = self.staged_guider.KSamplerSettings(
            seed=SEED, steps=self.scale.steps, sampler_name=SAMPLER, scheduler=SCHEDULER, denoise=1.0
        )
        return self.sampler_nodes.staged_ksample(
            model=self.model,
            positive=positive,
            latent=self.latent,
            settings=settings,
            cfg=1.0,
            tau1=tau1,
            tau2=tau2,
            identity=identity,
        )

    def with_reference(self, positive, identity):
        """Stage 2's conditioning (MLLM + reference latents), what a native sampler gets at every step."""
        positives, _ = self.staged_guider.stage_conditionings(positive, None, identity)
        return positives[2]

    def image(self):
        """One image end to end: encode, aggregate, identity, staged sampling (tau .95/.85), VAE decode."""
        positive, identity = self.conditioning()
        latent = self.staged(positive, identity, *TAU_PAPER)
        return self.comfy_nodes.VAEDecode().decode(self.vae, latent)[0]


def bench_flux(pipeline: Pipeline, device, scale: Scale) -> dict:
    """Staged vs native KSampler on the same latent, seed and steps, interleaved."""
    import comfy.model_management
    import comfy.samplers
    import torch

    positive, identity = pipeline.conditioning()
    full = pipeline.with_reference(positive, identity)
    comfy.model_management.load_models_gpu([pipeline.model])
    variants = {
        "native_no_reference": lambda: pipeline.native(positive),
        "staged_tau0": lambda: pipeline.staged(positive, identity, 0.0, 0.0),
        "native_reference_every_step": lambda: pipeline.native(full),
        "staged_paper": lambda: pipeline.staged(positive, identity, *TAU_PAPER),
    }
    with torch.inference_mode():
        for _ in range(scale.warmup):  # kernels, lazy inits
            for run in variants.values():
                run()
        times = {name: [] for name in variants}
        figures, latents = {}, {}
        for repeat in range(scale.flux_repeats):
            for name, run in variants.items():
                with PeakMemory(device) as memory:
                    seconds, out = timed(run, device)
                times[name].append(seconds)
                figures[name] = memory.figures()  # the last repeat's
                latents[name] = out["samples"]
    result = {}
    for name, runs in times.items():
        result[name] = {"seconds": statistics.median(runs), "runs": runs, **figures[name]}
        result[name]["outputs_finite"] = finite(latents[name])
    seconds = {name: figures["seconds"] for name, figures in result.items()}

    sigmas = comfy.samplers.calculate_sigmas(pipeline.model.get_model_object("model_sampling"), SCHEDULER, scale.steps)
    stage_steps = pipeline.pack("dla_core.schedule").stage_step_counts(sigmas.tolist(), *TAU_PAPER)
    reference = identity.latents[0]
    return {
        **result,
        "staged_tau0_equals_native": bit_equal(latents["staged_tau0"], latents["native_no_reference"]),
        "stage_steps_paper": list(stage_steps),
        "image_tokens": (scale.image_side // 16) ** 2,
        "reference_tokens": int(reference.shape[-1] * reference.shape[-2] // 4),
        "mllm_tokens": int(positive[0][0].shape[1]),
        "ratio_staged_vs_reference_every_step": seconds["staged_paper"] / seconds["native_reference_every_step"],
        "ratio_staged_tau0_vs_native": seconds["staged_tau0"] / seconds["native_no_reference"],
    }


def _release_models(device) -> None:
    import comfy.model_management
    import torch

    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def bench_pipeline(pipeline: Pipeline, device, scale: Scale, simulate_gb: float) -> dict:
    """End to end: warm (models resident), cold (all offloaded first), cold on a simulated ``simulate_gb`` GB card."""
    import comfy.model_management
    import torch

    def one_image():
        with torch.inference_mode():
            return pipeline.image()

    warm, image = measure(one_image, device, repeats=1, warmup=scale.warmup)  # after bench_flux: models resident
    _release_models(device)
    with PeakMemory(device) as memory:
        seconds, _ = timed(one_image, device)
    cold = {"seconds": seconds, **memory.figures()}
    result = {"image_shape": list(image.shape), "outputs_finite": finite(image), "warm": warm, "cold": cold}
    if simulate_gb > 0:
        total = comfy.model_management.get_total_memory(comfy.model_management.get_torch_device())
        reserved = max(0, total - int(simulate_gb * GIB))
        saved = comfy.model_management.EXTRA_RESERVED_VRAM
        comfy.model_management.EXTRA_RESERVED_VRAM = reserved  # what --reserve-vram (total - simulate_gb) sets
        try:
            _release_models(device)
            with PeakMemory(device) as memory:
                seconds, _ = timed(one_image, device)
        finally:
            comfy.model_management.EXTRA_RESERVED_VRAM = saved
        result["simulated_card"] = {
            "card_gib": simulate_gb,
            "device_total_gib": total / GIB,
            "reserve_vram_gib": reserved / GIB,
            "seconds": seconds,
            **memory.figures(),
            # PyTorch's allocations only: the CUDA context and library workspaces come on top on a real card
            "max_allocated_within_card": memory.peak <= simulate_gb * GIB if memory.cuda else None,
        }
    return result


# ----------------------------------------------------------------------------- report
def versions(comfy_path: Path, device) -> dict:
    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "comfyui": None,
        "comfyui_path": str(comfy_path),
        "pack_commit": None,
    }
    try:
        info["comfyui"] = importlib.import_module("comfyui_version").__version__
    except Exception:  # very old checkouts have no comfyui_version.py
        pass
    try:
        info["pack_commit"] = (
            subprocess.run(
                ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        pass
    try:  # ComfyUI >= 0.4 runs FLUX's rope through comfy-kitchen; which backend loaded changes the speed
        kitchen = importlib.import_module("comfy_kitchen")
        info["comfy_kitchen_backends"] = {name: state["available"] for name, state in kitchen.list_backends().items()}
    except (ImportError, AttributeError):
        info["comfy_kitchen_backends"] = None
    if torch.device(device).type == "cuda":
        properties = torch.cuda.get_device_properties(torch.device(device))
        info["device_name"] = properties.name
        info["device_memory_gib"] = properties.total_memory / GIB
    else:
        info["device_name"] = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return info


def table(results: dict) -> str:
    """One table: every time, memory figure and ratio side by side."""
    memory_label = "GPU max alloc MiB" if results["memory_kind"] == "cuda_max_allocated" else "CPU RSS MiB (approx.)"
    rows = [("measurement", "seconds", memory_label, "ratio", "goal")]

    def mem(figures):
        return f"{figures['peak_mib']:.0f} (+{figures['peak_delta_mib']:.0f})"

    m = results["mllm"]
    rows.append(
        (
            f"MLLM plain forward, {m['tokens']} tokens [backbone]",
            f"{m['plain_forward']['seconds']:.4f} [{m['plain_forward']['backbone_seconds']:.4f}]",
            mem(m["plain_forward"]),
            "1.000",
            "",
        )
    )
    rows.append(
        (
            f"MLLM encode_joint, {m['layers_captured']} layers captured [backbone]",
            f"{m['capture']['seconds']:.4f} [{m['capture']['backbone_seconds']:.4f}]",
            mem(m["capture"]),
            f"{m['ratio_backbone']:.3f} [call {m['ratio_call']:.3f}]",
            f"<= {GOALS['capture_vs_forward']}",
        )
    )
    for row in results["dla"]:
        label = f"DLA {row['pool']} {row['dtype']}, {row['parameters'] / 1e6:.1f} M params, {row['output_tokens']} tok"
        rows.append((label, f"{row['seconds']:.4f}", mem(row), "", ""))
    f = results["flux"]
    labels = {
        "native_no_reference": "FLUX native KSampler, no reference",
        "staged_tau0": "FLUX staged tau 0/0",
        "native_reference_every_step": "FLUX native, reference every step",
        "staged_paper": "FLUX staged tau .95/.85",
    }
    ratios = {
        "staged_tau0": (
            f"{f['ratio_staged_tau0_vs_native']:.3f} (bit-equal: {f['staged_tau0_equals_native']})",
            f"<= {GOALS['staged_tau0_vs_native']}",
        ),
        "staged_paper": (
            f"{f['ratio_staged_vs_reference_every_step']:.3f}",
            f"<= {GOALS['staged_vs_reference_every_step']}",
        ),
    }
    for name, label in labels.items():
        ratio, goal = ratios.get(name, ("", ""))
        rows.append((label, f"{f[name]['seconds']:.3f}", mem(f[name]), ratio, goal))
    p = results["pipeline"]
    for key, label in (("warm", "pipeline end to end, warm (s/image)"), ("cold", "pipeline end to end, cold")):
        rows.append((label, f"{p[key]['seconds']:.3f}", mem(p[key]), "", ""))
    if "simulated_card" in p:
        sim = p["simulated_card"]
        within = sim["max_allocated_within_card"]
        fits = "" if within is None else f"within {sim['card_gib']:g} GiB: {within}"
        label = f"pipeline, simulated {sim['card_gib']:g} GB card, cold"
        rows.append((label, f"{sim['seconds']:.3f}", mem(sim), fits, ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join([row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])])
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def collect_ratios(results: dict) -> dict:
    return {
        "capture_vs_forward_backbone": results["mllm"]["ratio_backbone"],
        "capture_vs_forward_call": results["mllm"]["ratio_call"],
        "staged_vs_reference_every_step": results["flux"]["ratio_staged_vs_reference_every_step"],
        "staged_tau0_vs_native": results["flux"]["ratio_staged_tau0_vs_native"],
    }


# ----------------------------------------------------------------------------- main
def run(comfy_path: Path, device: str, scale: Scale, simulate_gb: float, results: dict) -> dict:
    """Every measurement at ``scale`` on ``device``, filled into ``results`` as each phase ends (the JSON's content)."""
    comfy_nodes, pack = start_comfyui(comfy_path, device)
    import torch

    if scale.name == "tiny":
        scale = replace(scale, flux_hidden=tiny_flux_width(pack))
    dtype = torch.bfloat16
    work = Path(tempfile.mkdtemp(prefix="dla-gpu-bench-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    started = time.perf_counter()
    results.update(
        {
            "bench": "gpu_real_scale",
            "scale": asdict(scale),
            "device": device,
            "memory_kind": "cuda_max_allocated" if torch.device(device).type == "cuda" else "cpu_rss",
            "versions": versions(comfy_path, device),
            "goals": dict(GOALS),
            "notes": [
                "random weights at the real shapes; file reading skipped (models built on the device)",
                "ComfyUI started in-process without main.py: estimate-based model loading (no DynamicVRAM), "
                "PyTorch's caching allocator (no cudaMallocAsync)",
                "simulated card: comfy.model_management.EXTRA_RESERVED_VRAM = device total - card size (= "
                "--reserve-vram)",
                "cpu_rss memory figures are sampled process RSS, an approximation",
            ],
        }
    )
    reference = reference_image(scale.reference_side)

    print(f"[bench] building the MLLM ({scale.name}) on {device} ...", flush=True)
    mllm = build_mllm(pack, scale, device, dtype, work / "internvl")
    results["mllm"], features = bench_mllm(pack, mllm, scale, device, reference)
    print(f"[bench] MLLM done ({time.perf_counter() - started:.0f} s); DLA ...", flush=True)
    results["dla"] = bench_dla(pack, mllm.spec, features, scale, device)
    del features

    print(f"[bench] DLA done ({time.perf_counter() - started:.0f} s); FLUX ...", flush=True)
    import folder_paths

    checkpoint = pack("dla_core.checkpoint")
    dla_file = "bench_dla.safetensors"
    dla_folder = Path(folder_paths.get_folder_paths("dla")[0])
    checkpoint.save_dla(checkpoint.init_dla(mllm.spec, target="flux", seed=0), dla_folder / dla_file)
    dla_handle = pack("nodes.dla_nodes").load_managed_dla(dla_file)
    mllm_handle = pack("nodes.mllm_nodes").manage_mllm(mllm, "default")  # to the offload device, like the loader
    model, flux_parameters = build_flux(pack, scale, device)
    vae = build_vae(pack)
    results["flux_parameters"] = flux_parameters
    prompt = prompt_of(mllm.processor, scale.prompt_tokens)
    pipeline = Pipeline(comfy_nodes, pack, mllm_handle, dla_handle, vae, model, scale, reference, prompt)
    results["flux"] = bench_flux(pipeline, device, scale)
    print(f"[bench] FLUX done ({time.perf_counter() - started:.0f} s); pipeline ...", flush=True)
    results["pipeline"] = bench_pipeline(pipeline, device, scale, simulate_gb)
    results["ratios"] = collect_ratios(results)
    goal_ratios = {"capture_vs_forward": "capture_vs_forward_backbone"}  # the capture goal is about the forward itself
    ratios = results["ratios"]
    results["goals_met"] = {goal: ratios[goal_ratios.get(goal, goal)] <= limit for goal, limit in GOALS.items()}
    results["wall_seconds"] = time.perf_counter() - started
    return results


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--comfyui", type=Path, default=None, help="ComfyUI checkout (default: $COMFYUI_PATH, then /opt/ComfyUI)")
    add("--out", type=Path, default=None, help="JSON results (default: bench/results/gpu_real_scale-<scale>.json)")
    add("--device", default=None, help="cuda (default when available), cuda:N or cpu")
    add("--tiny", action="store_true", help="tiny sizes: seconds on a CPU, for CI (figures mean nothing)")
    add("--steps", type=int, default=None, help="sampling steps (default 28; tiny 3)")
    add("--repeats", type=int, default=None, help="timed FLUX runs per variant (default 2 after a warm-up; tiny 1)")
    add("--simulate-vram-gb", type=float, default=24.0, help="card size for the offloading run (0 = skip)")
    return parser.parse_args(argv)


def _comfy_path(arg: Path | None) -> Path:
    candidates = [arg] if arg else [Path(p) for p in (os.environ.get("COMFYUI_PATH"), "/opt/ComfyUI") if p]
    for path in candidates:
        if (path / "main.py").is_file() and (path / "comfy").is_dir():
            return path.resolve()
    tried = ", ".join(map(str, candidates)) or "(none given)"
    raise SystemExit(f"no ComfyUI checkout at {tried}: pass --comfyui PATH (a folder with main.py and comfy/).")


def main(argv=None) -> int:
    args = parse_args(argv)
    comfy_path = _comfy_path(args.comfyui)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}, but torch {torch.__version__} sees no CUDA GPU; on a CPU use --tiny.")
    if device == "cpu" and not args.tiny:
        raise SystemExit("real sizes (12B FLUX + 8B MLLM) need a CUDA GPU; on a CPU run with --tiny.")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise SystemExit(f"--device {device}: use cuda, cuda:N or cpu.")
    scale = TINY if args.tiny else REAL
    if args.steps is not None:
        scale = replace(scale, steps=args.steps)
    if args.repeats is not None:
        scale = replace(scale, flux_repeats=max(1, args.repeats))
    out = args.out or REPO_ROOT / "bench" / "results" / f"gpu_real_scale-{scale.name}.json"

    results: dict = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        run(comfy_path, device, scale, args.simulate_vram_gb, results)
    except BaseException:  # one GPU run is precious: keep every phase that finished
        results["error"] = traceback.format_exc()
        out.write_text(json.dumps(results, indent=2, sort_keys=True, default=str), encoding="utf-8")
        print(f"\nFAILED; the phases that finished are in {out}", file=sys.stderr)
        raise
    out.write_text(json.dumps(results, indent=2, sort_keys=True), encoding="utf-8")
    ratios = results["ratios"]
    if not all(math.isfinite(value) and value > 0 for value in ratios.values()):
        raise SystemExit(f"a ratio is not finite and positive: {ratios} (results in {out})")
    v = results["versions"]
    print(
        f"\n{results['scale']['name']} sizes on {v['device_name']}: torch {v['torch']} (CUDA {v['cuda']}), "
        f"transformers {v['transformers']}, ComfyUI {v['comfyui']}, pack {v['pack_commit']}"
    )
    f = results["flux"]
    print(
        f"FLUX {results['flux_parameters'] / 1e9:.2f} B parameters, {scale.image_side} px, {scale.steps} {SAMPLER} "
        f"steps; tokens: image {f['image_tokens']}, reference {f['reference_tokens']}, MLLM {f['mllm_tokens']}; "
        f"paper schedule stage steps {f['stage_steps_paper']}"
    )
    print(table(results))
    print(f"\nwrote {out} ({results['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
