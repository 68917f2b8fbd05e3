"""Disk and memory a training config needs, estimated before anything loads (``python -m dla_core.train validate``).

The shapes come from the model folders' ``config.json`` and safetensors headers when they exist (parameter
counts and LoRA shapes are then exact), else from the named presets below (``--dit`` / ``--mllm``), so the
paper's recipe can be sized without downloading it. The DLA's size is exact: it is built from its config on
PyTorch's meta device (no memory).

Rules (one source for every byte count the trainer reports, the bench prints and the docs quote):

- frozen weights: bytes of their dtype per parameter (bfloat16 2; ``model.quantize_base: int8`` 1 plus one
  bfloat16 scale per output row); the MLLM and the VAE only with ``data.features: online``;
- trainable (LoRA + DLA): float32 weights 4, gradients 4, and with mixed precision the bfloat16 copies autocast
  makes 2 bytes per parameter;
- optimizer state (:func:`optimizer_state_bytes`): AdamW 8 bytes per parameter (two float32 moments);
  ``adamw8bit`` (bitsandbytes) 2 bytes plus two float32 block maxima per 256 values, for tensors of at least
  4096 values (smaller ones stay 32-bit, as bitsandbytes does);
- activations per block and sample, bfloat16 with flash attention: ``34 * tokens * hidden`` bytes (the
  transformer-block rule of Korthikanti et al. 2022 without the attention-score term) plus the LoRA's
  rank-wide intermediates; with gradient checkpointing each block keeps only its input
  (``2 * tokens * hidden``) and one block is recomputed at a time. Tokens: the target's image tokens
  (``resolution**2 / 256``), the DLA's context tokens and, in stage 2, the reference's tokens;
- a fixed 1.5 GiB for the CUDA context, cuBLAS workspaces and allocator slack.

These are estimates (about +-30 % on activations); the measured figures of the tiny runs are in
``bench/bench_train.py``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DLAInputError
from .config import OPTIMIZERS

GiB = 1024**3
ACTIVATION_FACTOR = 34  # bytes per token per hidden unit per block (bf16, flash attention)
RUNTIME_OVERHEAD = int(1.5 * GiB)
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps smaller tensors' state in 32 bit
BNB_BLOCK = 256
TOKEN_PATCH = 16  # px per FLUX image token
TEMPLATE_TOKENS = 20  # chat-template tokens around the prompt (system prompt, role markers)
FLUX_VAE_PARAMS = 84_000_000  # FLUX.1's AutoencoderKL (encoder + decoder); FLUX.2's is about the same


@dataclass(frozen=True)
class DiTShape:
    """What the estimate needs of a FLUX transformer."""

    name: str
    family: str  # flux | flux2
    double_blocks: int
    single_blocks: int
    hidden: int
    mlp_ratio: float
    params: int

    def lora_shapes(self, targets) -> list[tuple[int, int]]:
        """(in, out) of every linear layer the LoRA targets adapt (diffusers names, as peft matches them)."""
        h, m = self.hidden, self.mlp_ratio
        double = {n: (h, h) for n in FLUX_DOUBLE_TARGETS}
        if self.family == "flux":
            single = {n: (h, h) for n in ("to_q", "to_k", "to_v")}
        else:  # FLUX.2 single blocks: one fused qkv + SwiGLU input projection, one fused output
            single = {"to_qkv_mlp_proj": (h, 3 * h + int(2 * m * h)), "attn.to_out": (h + int(m * h), h)}
        shapes = []
        for target in targets:
            if target in double:
                shapes += [double[target]] * self.double_blocks
            if target in single:
                shapes += [single[target]] * self.single_blocks
        return shapes


FLUX_DOUBLE_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def _flux_params(family: str, double: int, single: int, hidden: int, mlp_ratio: float, context: int) -> int:
    """Parameters of a FLUX.1 / FLUX.2 transformer from its shape (blocks' linear layers + embedders)."""
    h2 = hidden * hidden
    if family == "flux":  # per-block modulation, GELU MLP
        per_double, per_single = (8 + 4 * mlp_ratio + 12) * h2, (3 + mlp_ratio + 1 + mlp_ratio + 3) * h2
        shared = 0
    else:  # shared modulation, SwiGLU MLP
        per_double = (8 + 2 * 3 * mlp_ratio) * h2
        per_single = (3 + 2 * mlp_ratio + 1 + mlp_ratio) * h2
        shared = 15 * h2
    return int(double * per_double + single * per_single + shared + context * hidden + 64 * hidden * 4)


def _dit(name, family, double, single, heads, mlp_ratio, context) -> DiTShape:
    hidden = heads * 128
    return DiTShape(
        name,
        family,
        double,
        single,
        hidden,
        mlp_ratio,
        _flux_params(family, double, single, hidden, mlp_ratio, context),
    )


DIT_PRESETS = {
    "flux1-dev": _dit("FLUX.1-dev", "flux", 19, 38, 24, 4.0, 4096),
    "flux2-klein-4b": _dit("FLUX.2 [klein] 4B", "flux2", 5, 20, 24, 3.0, 7680),
    "flux2-klein-9b": _dit("FLUX.2 [klein] 9B", "flux2", 8, 24, 32, 3.0, 12288),
    "flux2-dev": _dit("FLUX.2 [dev]", "flux2", 8, 48, 48, 3.0, 15360),
}


@dataclass(frozen=True)
class MLLMShape:
    """What the estimate needs of an MLLM: hidden-state shape, size, pixels per image token side."""

    name: str
    family: str
    num_layers: int  # hidden states: embedding output + decoder layers
    width: int
    params: int
    token_px: int  # one image token per token_px x token_px pixels (patch x merge)
    default_image_px: int  # the side the estimate assumes when data.mllm_image_size is not set


TOKEN_PX = {"internvl": 28, "qwen2_5_vl": 28, "qwen3_vl": 32, "mistral3": 28}
DEFAULT_IMAGE_PX = {"internvl": 448}  # one InternVL tile; the others read the reference near its own size

MLLM_PRESETS = {
    "internvl3-8b": MLLMShape("InternVL3-8B", "internvl", 29, 3584, 7_940_000_000, 28, 448),
    "qwen3-vl-4b": MLLMShape("Qwen3-VL-4B", "qwen3_vl", 37, 2560, 4_440_000_000, 32, 512),
    "qwen3-vl-8b": MLLMShape("Qwen3-VL-8B", "qwen3_vl", 37, 4096, 8_770_000_000, 32, 512),
    "mistral-small-3.1-24b": MLLMShape("Mistral-Small-3.1-24B", "mistral3", 41, 5120, 24_000_000_000, 28, 512),
}
# The MLLM each DiT preset is paired with (FLUX.2's own text-encoder sizes as MLLMs).
PRESET_PAIRS = {
    "flux1-dev": "internvl3-8b",
    "flux2-klein-4b": "qwen3-vl-4b",
    "flux2-klein-9b": "qwen3-vl-8b",
    "flux2-dev": "mistral-small-3.1-24b",
}
DIT_TARGET = {
    "flux1-dev": "flux",
    "flux2-klein-4b": "flux2_klein",
    "flux2-klein-9b": "flux2_klein_9b",
    "flux2-dev": "flux2",
}


# ----------------------------------------------------------------------------- shapes from folders


def _safetensors_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    files = [folder] if folder.is_file() else sorted(folder.rglob("*.safetensors"))
    shapes = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:  # reads the header only
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def dit_shape_from_folder(path: str | Path) -> tuple[DiTShape, dict[str, tuple[int, ...]]]:
    """The DiT shape of a transformer folder / file (its config + weight headers) and its weight shapes."""
    path = Path(path)
    config_file = next((p for p in (path / "transformer" / "config.json", path / "config.json") if p.is_file()), None)
    if config_file is None:
        raise DLAInputError(f"'{path}' has no config.json; name a preset with --dit ({', '.join(DIT_PRESETS)}).")
    cfg = json.loads(config_file.read_text())
    family = "flux2" if "Flux2" in cfg.get("_class_name", "") else "flux"
    shapes = _safetensors_shapes(config_file.parent)
    shape = DiTShape(
        path.name,
        family,
        int(cfg.get("num_layers", 19)),
        int(cfg.get("num_single_layers", 38)),
        int(cfg.get("num_attention_heads", 24)) * int(cfg.get("attention_head_dim", 128)),
        float(cfg.get("mlp_ratio", 4.0 if family == "flux" else 3.0)),
        sum(math.prod(s) for s in shapes.values()),
    )
    return shape, shapes


def mllm_shape_from_folder(path: str | Path) -> MLLMShape:
    from ..spec import read_mllm_spec

    spec = read_mllm_spec(path)
    params = sum(math.prod(s) for s in _safetensors_shapes(Path(path)).values())
    return MLLMShape(
        spec.name,
        spec.family,
        spec.num_layers,
        spec.width,
        params,
        TOKEN_PX.get(spec.family, 28),
        DEFAULT_IMAGE_PX.get(spec.family, 512),
    )


def lora_params_from_shapes(shapes: dict[str, tuple[int, ...]], targets, rank: int) -> int:
    """Exact LoRA parameter count: ``rank * (in + out)`` for every 2-D weight whose module name ends in a target."""
    total = 0
    for key, shape in shapes.items():
        if not key.endswith(".weight") or len(shape) != 2:
            continue
        module = key[: -len(".weight")]
        if any(module == t or module.endswith("." + t) for t in targets):
            total += rank * (shape[0] + shape[1])
    return total


def dla_param_count(dla_config) -> int:
    """Parameters of the DLA a config describes (built on the meta device: no memory, no weights)."""
    import torch

    from ..dla import DualLayerAggregation

    with torch.device("meta"):
        return sum(p.numel() for p in DualLayerAggregation(dla_config).parameters())


def preset_dla_config(mllm: MLLMShape, dit_preset: str):
    """The config ``init-dla`` gives for this MLLM and DiT (its default random init)."""
    import torch

    from ..checkpoint import init_dla
    from ..spec import MLLMSpec

    with torch.device("meta"):
        return init_dla(MLLMSpec(mllm.family, mllm.num_layers, mllm.width, mllm.name), DIT_TARGET[dit_preset]).config


def lora_targets(config, family: str) -> list[str]:
    """The LoRA targets training uses: the config's, where FLUX.1's default list means FLUX.2's own on FLUX.2
    (as :func:`dla_core.train.module.add_lora` does)."""
    from .config import FLUX_ATTENTION_TARGETS
    from .family import default_lora_targets

    targets = list(config.lora.target_modules)
    return list(default_lora_targets(family)) if tuple(targets) == FLUX_ATTENTION_TARGETS else targets


# ----------------------------------------------------------------------------- byte rules


def optimizer_state_bytes(numels, optimizer: str) -> int:
    """Bytes of optimizer state for trainable tensors of these sizes (see the module docstring)."""
    if optimizer not in OPTIMIZERS:
        raise DLAInputError(f"train.optimizer '{optimizer}' is not one of {OPTIMIZERS}.")
    total = 0
    for n in numels:
        if optimizer == "adamw" or n < BNB_MIN_8BIT_SIZE:
            total += 8 * n
        else:
            total += 2 * n + 2 * 4 * math.ceil(n / BNB_BLOCK)
    return total


def base_weight_bytes(params: int, quantize: str, dtype_bytes: int, rows: int = 0) -> int:
    """Frozen DiT weights: ``dtype_bytes`` per parameter, or int8 (1 byte + a bfloat16 scale per output row)."""
    return params + 2 * rows if quantize == "int8" else dtype_bytes * params


# ----------------------------------------------------------------------------- the estimate


@dataclass
class Estimate:
    """Cache size and per-GPU memory of a config; ``parts``: name -> bytes (per GPU, DDP)."""

    dit: DiTShape
    mllm: MLLMShape
    num_samples: int
    mllm_tokens: int
    sequence_tokens: int
    cache_bytes_per_sample: int
    cache_bytes: int
    lora_params: int
    dla_params: int
    parts: dict[str, int] = field(default_factory=dict)
    batch_size: int = 1
    online_flops_fraction: float = 0.0

    @property
    def trainable_params(self) -> int:
        return self.lora_params + self.dla_params

    @property
    def per_gpu_bytes(self) -> int:
        return sum(self.parts.values())

    def sharded_bytes(self, gpus: int, strategy: str) -> int:
        """Per-GPU bytes under DeepSpeed ZeRO-2 (gradients + optimizer state sharded) or FSDP2 (everything
        that is a parameter, gradient or state sharded; activations and the online MLLM are not)."""
        sharded = {
            "zero2": ("gradients", "optimizer state"),
            "fsdp2": ("frozen DiT", "trainable weights", "gradients", "optimizer state", "autocast copies"),
        }[strategy]
        return sum(v // gpus if k in sharded else v for k, v in self.parts.items())


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def estimate(
    config,
    dit: DiTShape,
    mllm: MLLMShape,
    dla_config,
    num_samples: int,
    mean_prompt_words: float = 18.0,
    references_per_sample: float = 1.0,
    lora_params: int | None = None,
    dla_params: int | None = None,
) -> Estimate:
    """Disk and per-GPU memory (DDP) of ``config`` for these model shapes and this many samples."""
    d, t = config.data, config.train
    layers = len(d.mllm_layers) if d.mllm_layers else mllm.num_layers
    image_px = d.mllm_image_size or mllm.default_image_px
    image_tokens = (image_px // mllm.token_px) ** 2
    text_tokens = int(round(1.3 * mean_prompt_words)) + TEMPLATE_TOKENS
    mllm_tokens = int(image_tokens * references_per_sample + text_tokens)
    value_bytes = {"float8_e4m3fn": 1, "float32": 4}.get(d.cache_dtype, 2)
    hidden_bytes = layers * mllm_tokens * mllm.width * value_bytes
    if d.cache_dtype == "float8_e4m3fn":
        hidden_bytes += layers * mllm_tokens * 4  # one float32 scale per layer and token
    target_tokens = d.resolution**2 // TOKEN_PATCH**2
    reference_tokens = int(references_per_sample * (d.reference_size // TOKEN_PATCH) ** 2)
    latent_bytes = 4 * 16 * 4 * (target_tokens + reference_tokens)  # float32, 16 channels, 2x2 per token
    per_sample = hidden_bytes + 2 * mllm_tokens + latent_bytes
    if lora_params is None:
        targets = lora_targets(config, dit.family)
        lora_params = sum(config.lora.rank * (i + o) for i, o in dit.lora_shapes(targets))
    if dla_params is None:
        dla_params = dla_param_count(dla_config)
    trainable = lora_params + dla_params
    dtype_bytes = 4 if t.mixed_precision == "no" else 2
    quantize, optimizer = config.model.quantize_base, t.optimizer
    parts = {
        "frozen DiT": base_weight_bytes(dit.params, quantize, dtype_bytes, rows=dit.params // max(dit.hidden, 1)),
        "trainable weights": 4 * trainable,
        "gradients": 4 * trainable,
        "optimizer state": optimizer_state_bytes([lora_params, dla_params], optimizer),
    }
    if t.mixed_precision != "no":
        parts["autocast copies"] = 2 * trainable
    if d.features == "online":
        parts["frozen MLLM (online)"] = mllm.params * (4 if config.model.mllm_dtype == "float32" else 2)
        parts["frozen VAE (online)"] = FLUX_VAE_PARAMS * (2 if config.model.vae_dtype == "bfloat16" else 4)
    context_tokens = mllm_tokens + dla_config.null_length
    sequence = target_tokens + context_tokens + reference_tokens  # stage 2, the longer one
    blocks = dit.double_blocks + dit.single_blocks
    rank = config.lora.rank
    per_block = ACTIVATION_FACTOR * sequence * dit.hidden + 2 * sequence * rank * 4  # + LoRA intermediates
    if t.gradient_checkpointing:
        dit_activations = blocks * 2 * sequence * dit.hidden + per_block
    else:
        dit_activations = blocks * per_block
    lap_tokens = context_tokens * layers
    dla_activations = ACTIVATION_FACTOR * lap_tokens * dla_config.lap_width * dla_config.lap_blocks
    parts["activations"] = t.batch_size * (dit_activations + dla_activations + hidden_bytes)
    parts["CUDA context + workspace"] = RUNTIME_OVERHEAD
    step_flops = 6 * dit.params * sequence * t.batch_size  # forward, activation backward, checkpoint recompute
    online_flops = 2 * mllm.params * mllm_tokens * t.batch_size if d.features == "online" else 0
    return Estimate(
        dit,
        mllm,
        num_samples,
        mllm_tokens,
        sequence,
        0 if d.features == "online" else per_sample,
        0 if d.features == "online" else per_sample * num_samples,
        lora_params,
        dla_params,
        parts,
        t.batch_size,
        online_flops / step_flops,
    )


def format_estimate(est: Estimate, config, gpus: int = 8) -> str:
    """The lines ``validate`` prints."""
    d, t = config.data, config.train
    lines = [
        f"models: {est.dit.name} ({est.dit.params / 1e9:.1f}B) + {est.mllm.name} ({est.mllm.params / 1e9:.1f}B, "
        f"{len(d.mllm_layers) if d.mllm_layers else est.mllm.num_layers} of {est.mllm.num_layers} layers x "
        f"{est.mllm.width}); ~{est.mllm_tokens} MLLM tokens and {est.sequence_tokens} DiT tokens per sample",
    ]
    if d.features == "online":
        lines.append(
            f"feature cache: none (data.features: online; the MLLM forward adds ~{est.online_flops_fraction:.0%} to "
            "the FLOPs of a step)"
        )
    else:
        lines.append(
            f"feature cache: {_size(est.cache_bytes)} for {est.num_samples} samples "
            f"({_size(est.cache_bytes_per_sample)} each, {d.cache_dtype})"
        )
    lines.append(
        f"trainable: {est.trainable_params / 1e9:.3f}B parameters (LoRA rank {config.lora.rank} "
        f"{est.lora_params / 1e9:.3f}B + DLA {est.dla_params / 1e9:.3f}B); optimizer "
        f"{t.optimizer} state {est.parts['optimizer state'] / GiB:.1f} GiB"
    )
    lines.append(
        f"memory per GPU at batch {est.batch_size} (DDP): {est.per_gpu_bytes / GiB:.1f} GiB = "
        + " + ".join(f"{name} {value / GiB:.1f}" for name, value in est.parts.items())
    )
    lines.append(
        f"  over {gpus} GPUs: DeepSpeed ZeRO-2 {est.sharded_bytes(gpus, 'zero2') / GiB:.1f} GiB, "
        f"FSDP2 {est.sharded_bytes(gpus, 'fsdp2') / GiB:.1f} GiB per GPU (estimates, +-30 % on activations)"
    )
    return "\n".join(lines)


def estimate_for_config(
    config, records=None, num_samples: int | None = None, dit_preset: str | None = None, mllm_preset: str | None = None
) -> Estimate | str:
    """The estimate of ``validate``: shapes from the config's folders, or from presets where given (or where a
    folder is missing); returns a sentence saying what is missing when neither is there."""
    from ..checkpoint import read_dla_config

    m = config.model
    if dit_preset is not None and dit_preset not in DIT_PRESETS:
        raise DLAInputError(f"--dit '{dit_preset}' is not one of {', '.join(DIT_PRESETS)}.")
    if mllm_preset is not None and mllm_preset not in MLLM_PRESETS:
        raise DLAInputError(f"--mllm '{mllm_preset}' is not one of {', '.join(MLLM_PRESETS)}.")
    lora_params = None
    if dit_preset is not None:
        dit = DIT_PRESETS[dit_preset]
    elif m.flux and Path(m.flux).exists():
        dit, shapes = dit_shape_from_folder(m.flux)
        lora_params = lora_params_from_shapes(shapes, lora_targets(config, dit.family), config.lora.rank) or None
    else:
        return f"memory estimate: model.flux is not there; name a DiT with --dit ({', '.join(DIT_PRESETS)})."
    if mllm_preset is not None:
        mllm = MLLM_PRESETS[mllm_preset]
    elif m.mllm and Path(m.mllm).is_dir():
        mllm = mllm_shape_from_folder(m.mllm)
    elif dit_preset is not None:
        mllm = MLLM_PRESETS[PRESET_PAIRS[dit_preset]]
    else:
        return f"memory estimate: model.mllm is not there; name an MLLM with --mllm ({', '.join(MLLM_PRESETS)})."
    if m.init_dla and Path(m.init_dla).is_file() and dit_preset is None and mllm_preset is None:
        dla_config = read_dla_config(m.init_dla)
    else:
        preset = dit_preset or ("flux1-dev" if dit.family == "flux" else None)
        if preset is None:
            return "memory estimate: model.init_dla is not there; name the DiT with --dit for the DLA's size."
        dla_config = preset_dla_config(mllm, preset)
    if records:
        words = sum(len(r.prompt.split()) for r in records) / len(records)
        refs = sum(len(r.references) for r in records) / len(records)
        num_samples = len(records)
    else:
        words, refs = 18.0, 1.0
    return estimate(config, dit, mllm, dla_config, num_samples or 0, words, refs, lora_params=lora_params)
