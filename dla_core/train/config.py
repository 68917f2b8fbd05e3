"""Training configuration: nested dataclasses loaded from YAML and validated before any heavy work.

A config file has six sections (every key optional except the paths the chosen command needs)::

    model:   {mllm, flux, vae, init_dla, family, mllm_dtype, vae_dtype}
    data:    {manifest, cache_dir, resolution, aspect_buckets, max_aspect, max_crop, reference_size, shard_size,
              mllm_image_size, mllm_layers, cache_dtype, features}
    lora:    {rank, alpha, dropout, target_modules}
    train:   {output_dir, seed, batch_size, stage1_steps, stage2_steps, ...}
    dropout: {mllm_off, identity_off, both_off}
    validation: {samples, held_out, steps, seed, guidance, tau1, tau2, size}   (used when train.sample_every > 0)

Relative paths are resolved against the folder of the YAML file, so a config and its data can move
together. Unknown keys, wrong types and impossible values raise :class:`DLAInputError` naming the key.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..dtypes import TORCH_DTYPE_NAMES
from ..errors import DLAInputError
from ..flux.references import FLUX_DEV_GUIDANCE, REFERENCE_METHODS

# The attention projections of diffusers' FluxTransformer2DModel: image stream (to_q/k/v/out.0),
# text stream (add_*_proj, to_add_out); single blocks reuse the to_q/k/v names. Matches the
# default of diffusers' train_dreambooth_lora_flux.py and maps 1:1 to ComfyUI's Flux keys.
FLUX_ATTENTION_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)
PAPER_STAGE1_STEPS = 25_000
PAPER_STAGE2_STEPS = 10_000
PAPER_LORA_RANK = 512
TIMESTEP_SAMPLINGS = ("logit_normal", "uniform", "mode")
TIMESTEP_SHIFTS = ("none", "resolution", "fixed")
MIXED_PRECISIONS = ("no", "bf16", "fp16")
OPTIMIZERS = ("adamw", "adamw8bit")  # adamw8bit: bitsandbytes' AdamW8bit (optional package, CUDA)
QUANTIZE_BASE = ("none", "int8")  # int8: torchao int8 weight-only frozen DiT (optional package)
CACHE_DTYPES = (*TORCH_DTYPE_NAMES, "float8_e4m3fn")  # bfloat16, float16, float32; 8-bit float with a scale
FEATURE_MODES = ("cached", "online")
MODEL_FAMILIES = ("flux", "flux2")  # FLUX.1 (FluxTransformer2DModel), FLUX.2 (Flux2Transformer2DModel)


@dataclass
class ModelConfig:
    """Where the frozen models and the DLA initialisation come from (local folders/files only)."""

    mllm: str | None = None  # HF-format MLLM folder (prepare only)
    flux: str | None = None  # diffusers Flux(2)Transformer2DModel folder or ComfyUI-layout single file (train)
    vae: str | None = None  # diffusers AutoencoderKL folder; FLUX.2: AutoencoderKLFlux2 folder (prepare only)
    init_dla: str | None = None  # DLA checkpoint written by `python -m dla_core init-dla` (train)
    family: str | None = None  # flux | flux2; None = read from the transformer's config (train.family)
    mllm_dtype: str = "bfloat16"
    vae_dtype: str = "float32"
    quantize_base: str = "none"  # none | int8: the frozen DiT in int8 weight-only (torchao), LoRA over it


@dataclass
class DataConfig:
    """The manifest and the feature cache written by ``prepare``."""

    manifest: str | None = None  # JSONL: {"reference": path | [paths], "prompt": str, "target": path}
    cache_dir: str | None = None
    resolution: int = 1024  # target area ~ resolution**2 (aspect buckets) or the side of the square crop
    aspect_buckets: bool = True  # targets keep their aspect in buckets (dla_core.train.buckets); false = square crop
    max_aspect: float = 2.0  # widest / tallest bucket (long side / short side)
    max_crop: float = 0.2  # an image may lose at most this fraction of its side to the bucket's crop
    reference_size: int = 512  # references are resized so the longer side is this (VAE identity)
    shard_size: int = 64  # samples per cache shard
    mllm_image_size: int | None = None  # passed to encode_joint(image_size=...); None = MLLM default
    mllm_layers: list[int] | None = None  # keep only these MLLM layers; None = all (paper)
    cache_dtype: str = "bfloat16"  # dtype of cached MLLM hidden states (float8_e4m3fn: half the disk, ~3% error)
    features: str = "cached"  # cached: prepare writes them, training reads; online: the frozen MLLM runs in training


@dataclass
class LoraConfigSection:
    """LoRA on the FLUX transformer's attention projections (peft)."""

    rank: int = PAPER_LORA_RANK
    alpha: float | None = None  # None = rank (scale 1.0), as diffusers' Flux LoRA script
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(FLUX_ATTENTION_TARGETS))


@dataclass
class TrainConfig:
    """Optimisation, schedule, logging and checkpointing."""

    output_dir: str | None = None
    seed: int = 0
    batch_size: int = 1  # per process
    gradient_accumulation_steps: int = 1
    stage1_steps: int = PAPER_STAGE1_STEPS  # MLLM conditioning only
    stage2_steps: int = PAPER_STAGE2_STEPS  # MLLM + VAE identity
    lr_lora: float = 1e-4
    lr_dla: float = 1e-4
    weight_decay: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes: 2 instead of 8 bytes of state per parameter)
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant_with_warmup"  # any diffusers.optimization.get_scheduler name
    warmup_steps: int = 0
    mixed_precision: str = "bf16"  # autocast via accelerate: no | bf16 | fp16
    gradient_checkpointing: bool = False
    guidance: float = FLUX_DEV_GUIDANCE  # FLUX.1-dev distilled guidance fed during training (diffusers' script default)
    timestep_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    timestep_shift: str = "none"  # none | resolution (FLUX's mu from image token count) | fixed
    shift: float = 3.0  # used by timestep_shift: fixed
    # How identity tokens are placed (as ComfyUI's reference_latents_method); None = the family's default:
    # FLUX.1 'offset' (DEFAULT_REFERENCE_METHOD), FLUX.2 'index' (its only one).
    reference_method: str | None = None
    checkpoint_every: int = 1000
    sample_every: int = 0  # validation images + held-out loss every this many steps (0 = never)
    keep_checkpoints: int = 3
    tensorboard: bool = False
    num_workers: int = 0
    progress_bar: bool = True


@dataclass
class DropoutConfig:
    """Per-sample condition dropout rates (mutually exclusive events; the rest keeps both).

    In stage 1 there is no identity, so a sample drops the MLLM condition with
    probability ``mllm_off + both_off``.
    """

    mllm_off: float = 0.1  # MLLM condition replaced by the DLA's null sequence (inference stage 3)
    identity_off: float = 0.1  # reference latents removed (inference stage 1)
    both_off: float = 0.05  # both (the unconditional branch for CFG)


@dataclass
class ValidationConfig:
    """What ``train.sample_every`` produces: images of a fixed validation set and a held-out loss.

    ``samples``: ``[{reference: path | [paths], prompt: str}]``, sampled with the staged sampler (``steps``,
    ``seed``, ``guidance``, ``tau1``/``tau2``) at ``size`` (square side; None = data.resolution).
    ``held_out``: the last this many manifest samples are kept out of training; their loss, with noise and
    timesteps fixed by ``seed``, is comparable across steps.
    """

    samples: list[dict] = field(default_factory=list)
    held_out: int = 0
    steps: int = 20
    seed: int = 0
    guidance: float = 2.5  # the paper's inference guidance (dla_core.flux.sampling.DEFAULT_GUIDANCE)
    tau1: float = 0.95
    tau2: float = 0.85
    size: int | None = None


@dataclass
class DLATrainingConfig:
    """The whole training config file."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfigSection = field(default_factory=LoraConfigSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    source: str = ""  # the YAML file it came from

    @property
    def total_steps(self) -> int:
        return self.train.stage1_steps + self.train.stage2_steps

    def stage_at(self, step: int) -> int:
        """Training stage (1 or 2) of global optimisation step ``step`` (0-based)."""
        return 1 if step < self.train.stage1_steps else 2

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data


_SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "lora": LoraConfigSection,
    "train": TrainConfig,
    "dropout": DropoutConfig,
    "validation": ValidationConfig,
}
_PATH_KEYS = {
    ("model", "mllm"),
    ("model", "flux"),
    ("model", "vae"),
    ("model", "init_dla"),
    ("data", "manifest"),
    ("data", "cache_dir"),
    ("train", "output_dir"),
}


def _check_type(where: str, value, annotation: str):
    """Coerce/validate one YAML value against the dataclass field's annotation string."""
    optional = "None" in annotation
    if value is None:
        if optional:
            return None
        raise DLAInputError(
            f"Config key '{where}' is empty (null); give it a value or remove the line for the default."
        )
    base = annotation.replace("| None", "").strip()
    if base == "bool":
        if not isinstance(value, bool):
            raise DLAInputError(f"Config key '{where}' must be true or false, got {value!r}.")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise DLAInputError(f"Config key '{where}' must be an integer, got {value!r}.")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DLAInputError(f"Config key '{where}' must be a number, got {value!r}.")
        return float(value)
    if base == "str":
        if not isinstance(value, (str, Path)):
            raise DLAInputError(f"Config key '{where}' must be a string, got {value!r}.")
        return str(value)
    if base.startswith("list[int]"):
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise DLAInputError(f"Config key '{where}' must be a list of integers, got {value!r}.")
        return list(value)
    if base.startswith("list[dict]"):
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise DLAInputError(f"Config key '{where}' must be a list of mappings, got {value!r}.")
        return [dict(v) for v in value]
    if base.startswith("list[str]"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DLAInputError(f"Config key '{where}' must be a list of strings, got {value!r}.")
        return list(value)
    return value


def config_from_dict(raw: dict, base_dir: str | Path = ".", source: str = "") -> DLATrainingConfig:
    """Build and validate a config from a parsed YAML mapping. Relative paths resolve against ``base_dir``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise DLAInputError(
            f"Training config {source or ''} must be a YAML mapping with sections {', '.join(_SECTIONS)}."
        )
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise DLAInputError(
            f"Unknown section(s) {unknown} in training config {source}. Allowed sections: {', '.join(_SECTIONS)}."
        )
    sections = {}
    for name, cls in _SECTIONS.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise DLAInputError(f"Section '{name}' of training config {source} must be a mapping of key: value.")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        bad = sorted(set(values) - set(fields))
        if bad:
            raise DLAInputError(
                f"Unknown key(s) {', '.join(f'{name}.{k}' for k in bad)} in training config {source}. "
                f"Allowed keys in '{name}': {', '.join(fields)}."
            )
        kwargs = {}
        for key, value in values.items():
            value = _check_type(f"{name}.{key}", value, str(fields[key].type))
            if (name, key) in _PATH_KEYS and value is not None:
                path = Path(value).expanduser()
                value = str(path if path.is_absolute() else (Path(base_dir) / path))
            kwargs[key] = value
        sections[name] = cls(**kwargs)
    for sample in sections["validation"].samples:  # reference paths resolve like every other path
        refs = sample.get("reference")
        if isinstance(refs, (str, list)):
            resolved = [
                str(p if (p := Path(r).expanduser()).is_absolute() else Path(base_dir) / p)
                for r in ([refs] if isinstance(refs, str) else refs)
                if isinstance(r, str)
            ]
            sample["reference"] = resolved
    config = DLATrainingConfig(**sections, source=str(source))
    validate_values(config)
    return config


def load_config(path: str | Path) -> DLATrainingConfig:
    """Read and validate a training YAML file (cheap: touches no model or image)."""
    path = Path(path)
    if not path.is_file():
        raise DLAInputError(f"Training config '{path}' does not exist. See configs/train_tiny.yaml for an example.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DLAInputError(f"Training config '{path}' is not valid YAML: {exc}") from exc
    return config_from_dict(raw, base_dir=path.parent.resolve(), source=str(path))


def _require(condition: bool, message: str):
    if not condition:
        raise DLAInputError(message)


def validate_values(config: DLATrainingConfig) -> None:
    """Check ranges and enumerations; raises :class:`DLAInputError` naming the key and a fix."""
    t, d, lo, dr = config.train, config.data, config.lora, config.dropout
    _require(
        t.stage1_steps >= 1,
        f"train.stage1_steps is {t.stage1_steps}: stage 1 (MLLM only) needs at least 1 step (paper: "
        f"{PAPER_STAGE1_STEPS}).",
    )
    _require(
        t.stage2_steps >= 1,
        f"train.stage2_steps is {t.stage2_steps}: stage 2 (MLLM + identity) needs at least 1 step (paper: "
        f"{PAPER_STAGE2_STEPS}).",
    )
    _require(lo.rank >= 1, f"lora.rank is {lo.rank}: a LoRA needs rank >= 1 (paper: {PAPER_LORA_RANK}).")
    _require(
        lo.alpha is None or lo.alpha > 0, f"lora.alpha is {lo.alpha}: use a positive number or leave it out (= rank)."
    )
    _require(0.0 <= lo.dropout < 1.0, f"lora.dropout is {lo.dropout}: must be in [0, 1).")
    _require(len(lo.target_modules) > 0, "lora.target_modules is empty: list the attention projections to adapt.")
    _require(t.batch_size >= 1, f"train.batch_size is {t.batch_size}: must be >= 1.")
    _require(t.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps must be >= 1.")
    _require(t.lr_lora > 0 and t.lr_dla > 0, "train.lr_lora and train.lr_dla must be positive.")
    _require(t.max_grad_norm >= 0, "train.max_grad_norm must be >= 0 (0 disables clipping).")
    _require(t.warmup_steps >= 0, "train.warmup_steps must be >= 0.")
    _require(t.checkpoint_every >= 1, "train.checkpoint_every must be >= 1 (steps between checkpoints).")
    _require(t.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1.")
    _require(
        t.mixed_precision in MIXED_PRECISIONS,
        f"train.mixed_precision '{t.mixed_precision}' is not one of {MIXED_PRECISIONS}.",
    )
    _require(
        t.timestep_sampling in TIMESTEP_SAMPLINGS,
        f"train.timestep_sampling '{t.timestep_sampling}' is not one of {TIMESTEP_SAMPLINGS}.",
    )
    _require(
        t.timestep_shift in TIMESTEP_SHIFTS,
        f"train.timestep_shift '{t.timestep_shift}' is not one of {TIMESTEP_SHIFTS}.",
    )
    _require(t.shift > 0, "train.shift must be positive.")
    _require(t.logit_std > 0, "train.logit_std must be positive.")
    _require(
        t.reference_method is None or t.reference_method in REFERENCE_METHODS,
        f"train.reference_method '{t.reference_method}' is not one of {REFERENCE_METHODS}.",
    )
    _require(t.num_workers >= 0, "train.num_workers must be >= 0.")
    _require(t.optimizer in OPTIMIZERS, f"train.optimizer '{t.optimizer}' is not one of {OPTIMIZERS}.")
    _require(
        config.model.quantize_base in QUANTIZE_BASE,
        f"model.quantize_base '{config.model.quantize_base}' is not one of {QUANTIZE_BASE}.",
    )
    _require(
        config.model.family in (None, *MODEL_FAMILIES),
        f"model.family '{config.model.family}' is not one of {MODEL_FAMILIES} (or leave it out: it is read from the "
        "transformer's config).",
    )
    _require(
        d.resolution >= 16 and d.resolution % 16 == 0,
        f"data.resolution is {d.resolution}: use a multiple of 16 (FLUX packs 2x2 latents of an 8x VAE).",
    )
    _require(
        d.reference_size >= 16 and d.reference_size % 16 == 0,
        f"data.reference_size is {d.reference_size}: use a multiple of 16.",
    )
    _require(d.shard_size >= 1, "data.shard_size must be >= 1.")
    _require(d.max_aspect >= 1.0, f"data.max_aspect is {d.max_aspect}: the long/short side ratio must be >= 1.")
    _require(0.0 <= d.max_crop < 1.0, f"data.max_crop is {d.max_crop}: must be in [0, 1).")
    _require(d.cache_dtype in CACHE_DTYPES, f"data.cache_dtype '{d.cache_dtype}' is not one of {CACHE_DTYPES}.")
    _require(d.features in FEATURE_MODES, f"data.features '{d.features}' is not one of {FEATURE_MODES}.")
    _require(
        d.features == "cached" or t.num_workers == 0,
        f"data.features: online runs the MLLM on the GPU in the training process; set train.num_workers to 0 (it is "
        f"{t.num_workers}).",
    )
    _require(d.mllm_image_size is None or d.mllm_image_size >= 14, "data.mllm_image_size must be >= 14 or left out.")
    for name in ("mllm_off", "identity_off", "both_off"):
        rate = getattr(dr, name)
        _require(0.0 <= rate <= 1.0, f"dropout.{name} is {rate}: a rate must be in [0, 1].")
    total = dr.mllm_off + dr.identity_off + dr.both_off
    _require(total <= 1.0, f"dropout rates add up to {total:.3f} > 1: they are exclusive events, lower them.")
    v = config.validation
    _require(t.sample_every >= 0, "train.sample_every must be >= 0 (0: no validation).")
    _require(v.held_out >= 0, "validation.held_out must be >= 0.")
    _require(v.steps >= 1, "validation.steps must be >= 1.")
    _require(0.0 <= v.tau2 <= v.tau1 <= 1.0, f"validation: need 0 <= tau2 <= tau1 <= 1, got {v.tau1} / {v.tau2}.")
    _require(v.size is None or (v.size >= 16 and v.size % 16 == 0), "validation.size must be a multiple of 16.")
    for k, sample in enumerate(v.samples):
        _require(
            set(sample) == {"reference", "prompt"}
            and bool(sample["reference"])
            and isinstance(sample["prompt"], str)
            and bool(sample["prompt"].strip()),
            f"validation.samples[{k}] must be {{reference: path | [paths], prompt: text}}, got {sample!r}.",
        )


def require_paths(config: DLATrainingConfig, keys: typing.Iterable[str], command: str) -> None:
    """Check that ``section.key`` paths needed by ``command`` are set and exist."""
    for dotted in keys:
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if value is None:
            raise DLAInputError(f"`{command}` needs '{dotted}' in the config {config.source}; add it.")
        if dotted in ("data.cache_dir", "train.output_dir"):
            continue  # created on demand
        if not Path(value).exists():
            raise DLAInputError(
                f"'{dotted}' points to '{value}', which does not exist. Fix the path in {config.source}."
            )
