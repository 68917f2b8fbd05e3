"""Two-stage training of the DLA and a FLUX LoRA on cached MLLM features (accelerate + peft + diffusers).

One optimisation step:

1. a batch of cached samples (MLLM hidden states of all layers, target latent, reference latents);
2. per sample, from the run's own seeded generator: noise, flow time ``sigma`` and a condition
   dropout event (``DropoutConfig``);
3. DLA(features) -> context tokens + pooled; samples whose MLLM condition is dropped get the DLA's
   learned null sequence (``DualLayerAggregation.null_conditioning``: the same "MLLM off" the
   sampler's stage 3 uses);
4. ``x_t = (1 - sigma) * x_0 + sigma * noise``; the LoRA'd FluxTransformer2DModel predicts the
   velocity ``noise - x_0`` on ``[text ; image ; references]`` tokens laid out by
   :mod:`dla_core.flux_refs` (ComfyUI's placement); stage 2 adds the reference latents of
   samples whose identity is kept; MSE on the target tokens only.

Timestep sampling (as diffusers' ``train_dreambooth_lora_flux.py``): ``u`` from
``compute_density_for_timestep_sampling`` (``logit_normal`` default, mean 0, std 1: sigmoid of a
normal; ``uniform``; SD3's ``mode``), then optionally shifted: ``resolution`` applies FLUX's
inference shift ``mu = calculate_shift(image tokens)``, ``sigma = e^mu / (e^mu + 1/u - 1)``;
``fixed`` applies ``sigma = s*u / (1 + (s-1)*u)``. The training guidance value is fed to
FLUX.1-dev's guidance embedding (diffusers' default 3.5). The loss is unweighted.

Exact resumption: the data order is a pure function of (seed, step) (:class:`StreamSampler`),
all per-step randomness comes from :class:`TrainRNG`, whose state accelerate checkpoints with
the optimizer, scheduler and global RNG states, so a resumed run reproduces the losses of an
uninterrupted one. Checkpoints hold only the trainable weights (DLA + LoRA), not the frozen base.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import DLAInputError
from ..features import MLLMFeatures
from .config import DLATrainingConfig, require_paths

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"
TRAINABLE_FILE = "trainable.safetensors"
LOSS_CSV = "loss.csv"

# Dropout event codes, per sample.
KEEP_BOTH, MLLM_OFF, IDENTITY_OFF, BOTH_OFF = 0, 1, 2, 3


# ----------------------------------------------------------------------------- reproducible state


class TrainRNG:
    """The generator of all per-step randomness (noise, sigmas, dropout); checkpointed by accelerate."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


@dataclass
class TrainingProgress:
    """Optimisation steps done; checkpointed by accelerate."""

    step: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


class StreamSampler(torch.utils.data.Sampler):
    """Endless sample order: epoch ``e`` is ``randperm(n)`` seeded by ``seed + e``; process ``rank``
    of ``world`` takes every ``world``-th index. Starts at micro-batch ``start_batch`` so a resumed
    run continues exactly where the checkpoint stopped (no batches are skipped or repeated)."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start_batch: int = 0):
        super().__init__()
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world, self.start_batch = rank, world, start_batch

    def __iter__(self):
        position = self.start_batch * self.batch_size * self.world + self.rank  # in the global stream
        while True:
            epoch, offset = divmod(position, self.num_samples)
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + epoch))
            while offset < self.num_samples:
                yield int(order[offset])
                offset += self.world
                position += self.world
            # offset ran past the epoch end; position already points into the next epoch


# ----------------------------------------------------------------------------- the trained module


@dataclass
class StepInputs:
    """Random inputs of one step, drawn from :class:`TrainRNG` (CPU)."""

    noise: torch.Tensor  # [batch, C, H, W]
    sigmas: torch.Tensor  # [batch]
    events: torch.Tensor  # [batch] long, KEEP_BOTH / MLLM_OFF / IDENTITY_OFF / BOTH_OFF


def sample_sigmas(config: DLATrainingConfig, batch_size: int, image_tokens: int, generator: torch.Generator) -> torch.Tensor:
    """Flow times in (0, 1) per the config (see module docstring)."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    t = config.train
    scheme = {"uniform": "none"}.get(t.timestep_sampling, t.timestep_sampling)
    u = compute_density_for_timestep_sampling(
        scheme, batch_size, logit_mean=t.logit_mean, logit_std=t.logit_std, mode_scale=t.mode_scale, generator=generator
    )
    u = u.clamp(1e-5, 1 - 1e-5)
    if t.timestep_shift == "resolution":
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        mu = calculate_shift(image_tokens)
        u = math.exp(mu) / (math.exp(mu) + (1 / u - 1))
    elif t.timestep_shift == "fixed":
        u = t.shift * u / (1 + (t.shift - 1) * u)
    return u.float()


def sample_events(config: DLATrainingConfig, stage: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Per-sample dropout events. Stage 1 has no identity: MLLM off with rate mllm_off + both_off."""
    d = config.dropout
    draw = torch.rand(batch_size, generator=generator)
    events = torch.full((batch_size,), KEEP_BOTH, dtype=torch.long)
    if stage == 1:
        events[draw < d.mllm_off + d.both_off] = MLLM_OFF
        return events
    events[draw < d.mllm_off + d.identity_off + d.both_off] = BOTH_OFF
    events[draw < d.mllm_off + d.identity_off] = IDENTITY_OFF
    events[draw < d.mllm_off] = MLLM_OFF
    return events


class DLAFluxTrainModule(nn.Module):
    """DLA + LoRA'd FLUX transformer; ``forward`` returns the flow-matching loss of a batch.

    One module so that DDP/FSDP wrap every trainable weight (the DLA's null sequence included).
    """

    def __init__(self, dla: nn.Module, transformer: nn.Module, feature_meta: dict, guidance: float, reference_method: str):
        super().__init__()
        self.dla = dla
        self.transformer = transformer
        self.feature_meta = feature_meta
        self.guidance = guidance
        self.reference_method = reference_method

    def features(self, batch: dict) -> MLLMFeatures:
        meta = self.feature_meta
        return MLLMFeatures(
            hidden_states=batch["hidden_states"],
            image_mask=batch["image_mask"],
            text_mask=batch["text_mask"],
            attention_mask=batch["attention_mask"],
            family=meta["family"],
            num_layers=int(meta["num_layers"]),
            width=int(meta["width"]),
            layer_indices=tuple(meta["layer_indices"]),
            prompts=tuple(batch.get("prompts", ())),
            model_name=meta.get("model_name", ""),
        )

    def conditioning(self, batch: dict, mllm_off: torch.Tensor):
        """DLA output with the null sequence swapped in where ``mllm_off``.

        Returns context [batch, tokens, C], mask [batch, tokens] bool, pooled [batch, P].
        """
        cond = self.dla(self.features(batch))
        null = self.dla.null_conditioning(cond.tokens.shape[0])
        length = max(cond.tokens.shape[1], null.tokens.shape[1])

        def pad(tokens, mask):
            extra = length - tokens.shape[1]
            return (nn.functional.pad(tokens, (0, 0, 0, extra)), nn.functional.pad(mask, (0, extra), value=False))

        tokens, mask = pad(cond.tokens, cond.token_mask)
        null_tokens, null_mask = pad(null.tokens.to(tokens.dtype), null.token_mask)
        off = mllm_off.to(tokens.device)
        context = torch.where(off[:, None, None], null_tokens, tokens)
        context_mask = torch.where(off[:, None], null_mask, mask)
        pooled = torch.where(off[:, None], null.pooled.to(cond.pooled.dtype), cond.pooled)
        return context, context_mask, pooled

    def forward(self, batch: dict, noise: torch.Tensor, sigmas: torch.Tensor, events: torch.Tensor, stage: int) -> torch.Tensor:
        from ..flux_refs import image_position_ids, pack_latents, reference_tokens, text_position_ids

        x0 = batch["target"]  # [batch, C, H, W]
        device = x0.device
        noise, sigmas = noise.to(device, x0.dtype), sigmas.to(device, x0.dtype)
        mllm_off = (events == MLLM_OFF) | (events == BOTH_OFF)
        identity_on = (events == KEEP_BOTH) | (events == MLLM_OFF) if stage == 2 else torch.zeros_like(mllm_off)
        context, context_mask, pooled = self.conditioning(batch, mllm_off)
        s = sigmas[:, None, None, None]
        noisy = (1 - s) * x0 + s * noise
        target = noise - x0  # flow-matching velocity
        height, width = x0.shape[-2:]

        # Samples whose extra image tokens share a layout run together (diffusers takes one id table per call).
        groups: dict[tuple, list[int]] = {}
        for row in range(x0.shape[0]):
            refs = batch["references"][row] if bool(identity_on[row]) else []
            groups.setdefault(tuple(tuple(r.shape) for r in refs), []).append(row)
        per_sample = []
        dtype = next(p for p in self.transformer.parameters()).dtype
        for layout, rows in groups.items():
            idx = torch.tensor(rows, device=device)
            image = pack_latents(noisy[idx])  # [b, patches, C*4]
            image_tokens = image.shape[1]
            ids = image_position_ids(height, width, device=device)
            if layout:
                refs = [torch.stack([batch["references"][r][k] for r in rows]).to(device, x0.dtype) for k in range(len(layout))]
                ref_tokens, ref_ids = reference_tokens(refs, (height, width), len(rows), self.reference_method)
                image = torch.cat([image, ref_tokens], dim=1)
                ids = torch.cat([ids, ref_ids.to(device)], dim=0)
            ctx_mask = context_mask[idx]
            keep = int(ctx_mask.sum(1).max())  # valid tokens are left-aligned: trim shared padding
            ctx, ctx_mask = context[idx, :keep], ctx_mask[:, :keep]
            attention_kwargs = None
            if not bool(ctx_mask.all()):
                # Padding keys are invisible to every query: exactly as if the padding were absent.
                key_mask = torch.cat([ctx_mask, ctx_mask.new_ones(len(rows), image.shape[1])], dim=1)
                attention_kwargs = {"attention_mask": key_mask[:, None, None, :]}
            guidance = None
            if getattr(self.transformer.config, "guidance_embeds", False):
                guidance = torch.full((len(rows),), self.guidance, device=device, dtype=dtype)
            out = self.transformer(
                hidden_states=image.to(dtype),
                encoder_hidden_states=ctx.to(dtype),
                pooled_projections=pooled[idx].to(dtype),
                timestep=sigmas[idx].to(dtype),
                img_ids=ids,
                txt_ids=text_position_ids(keep, device=device),
                guidance=guidance,
                joint_attention_kwargs=attention_kwargs,
                return_dict=False,
            )[0]
            prediction = out[:, :image_tokens].float()  # target tokens only
            per_sample.append(((prediction - pack_latents(target[idx]).float()) ** 2).mean(dim=(1, 2)))
        losses = torch.cat(per_sample)  # [batch], in group order
        return losses.mean()


# ----------------------------------------------------------------------------- setup


@dataclass
class TrainResult:
    """What a call to :func:`train` did."""

    output_dir: Path
    start_step: int
    end_step: int
    losses: list[float] = field(default_factory=list)  # one per optimisation step run here
    seconds: float = 0.0
    export_dir: Path | None = None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def preflight(config: DLATrainingConfig):
    """All cheap checks before any model loads: paths, cache completeness, DLA <-> MLLM/FLUX shapes."""
    from ..checkpoint import read_dla_config
    from ..spec import MLLMSpec
    from .data import CachedFeatureDataset

    require_paths(config, ["model.flux", "model.init_dla", "data.cache_dir", "train.output_dir"], "train")
    dataset = CachedFeatureDataset(config.data.cache_dir)
    dla_config = read_dla_config(config.model.init_dla)
    meta = dataset.feature_meta
    spec = MLLMSpec(meta["family"], int(meta["num_layers"]), int(meta["width"]), meta.get("model_name", ""))
    if (spec.family, spec.num_layers, spec.width) != (dla_config.mllm_family, dla_config.num_layers, dla_config.mllm_width):
        raise DLAInputError(
            f"The init DLA '{config.model.init_dla}' expects {dla_config.describe_mllm()}, but the cache was prepared with "
            f"{spec.describe()}. Run `python -m dla_core init-dla` for the MLLM you prepared with, or prepare again."
        )
    missing = [layer for layer in dla_config.used_layers if layer not in meta["layer_indices"]]
    if missing:
        raise DLAInputError(
            f"The DLA reads MLLM layers {missing} that the cache does not hold (data.mllm_layers). Prepare again with all layers."
        )
    flux_path = Path(config.model.flux)
    config_file = next((p for p in (flux_path / "transformer" / "config.json", flux_path / "config.json") if p.is_file()), None)
    if config_file is not None:
        flux_config = _read_json(config_file)
        if flux_config.get("joint_attention_dim") != dla_config.context_width or flux_config.get("pooled_projection_dim") != dla_config.pooled_width:
            raise DLAInputError(
                f"The FLUX transformer takes context {flux_config.get('joint_attention_dim')} / pooled "
                f"{flux_config.get('pooled_projection_dim')} but the DLA outputs {dla_config.context_width} / "
                f"{dla_config.pooled_width}. Create the DLA with target 'flux'."
            )
    return dataset


def add_lora(transformer: nn.Module, config: DLATrainingConfig) -> None:
    """Freeze the base transformer and add the peft LoRA adapter (B = 0, so the start is the base model)."""
    from peft import LoraConfig

    lora = config.lora
    transformer.requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha if lora.alpha is not None else lora.rank,
            lora_dropout=lora.dropout,
            init_lora_weights="gaussian",
            target_modules=list(lora.target_modules),
        )
    )
    if not any(p.requires_grad for p in transformer.parameters()):
        raise DLAInputError(f"lora.target_modules {lora.target_modules} match no layer of the FLUX transformer.")
    for param in transformer.parameters():
        if param.requires_grad:
            param.data = param.data.float()  # trainable weights in fp32 even over a bf16 base


def build_module(config: DLATrainingConfig, feature_meta: dict, base_dtype: torch.dtype = torch.float32) -> DLAFluxTrainModule:
    """Load FLUX (frozen, + LoRA) and the init DLA (trainable) into one module."""
    from ..checkpoint import load_dla
    from ..tiny.diffusers_models import load_flux_transformer

    transformer = load_flux_transformer(config.model.flux, dtype=base_dtype)
    add_lora(transformer, config)
    if config.train.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    dla = load_dla(config.model.init_dla, dtype=torch.float32)
    dla.requires_grad_(True)
    return DLAFluxTrainModule(dla, transformer, feature_meta, config.train.guidance, config.train.reference_method)


def trainable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous().cpu() for name, p in module.named_parameters() if p.requires_grad}


def load_trainable(module: nn.Module, path: Path) -> None:
    """Load a ``trainable.safetensors`` into the matching parameters (all must be present)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    params = dict(module.named_parameters())
    expected = {name for name, p in params.items() if p.requires_grad}
    missing = sorted(expected - set(state))
    if missing:
        raise DLAInputError(f"Checkpoint '{path}' lacks {len(missing)} trainable weights (e.g. {missing[0]}): "
                            "it was written with another LoRA/DLA setup. Use the matching config.")
    with torch.no_grad():
        for name in expected:
            params[name].copy_(state[name].to(params[name].dtype))


def list_checkpoints(output_dir: Path) -> list[Path]:
    root = output_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    """``None`` (fresh), ``"latest"`` (newest checkpoint, or fresh if none) or a checkpoint folder."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / TRAINABLE_FILE).is_file():
        raise DLAInputError(f"'{resume}' is not a training checkpoint (no {TRAINABLE_FILE}). Use a folder under "
                            f"{output_dir / CHECKPOINT_DIR} or 'latest'.")
    return path


# ----------------------------------------------------------------------------- the loop


def train(
    config: DLATrainingConfig,
    resume: str | None = None,
    stop_at_step: int | None = None,
    export: bool = True,
) -> TrainResult:
    """Run (or resume) the two-stage training; returns the losses of the steps run here.

    ``stop_at_step``: stop (with a checkpoint) once that many optimisation steps are done.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from .data import collate_samples

    dataset = preflight(config)  # cheap checks first
    t = config.train
    output_dir = Path(t.output_dir)
    resume_dir = resolve_resume(output_dir, resume)
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        log_with="tensorboard" if t.tensorboard else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(t.seed)  # the LoRA's A matrices are drawn from the global generator
    base_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.mixed_precision, torch.float32)
    module = build_module(config, dataset.feature_meta, base_dtype)
    params_lora = [p for p in module.transformer.parameters() if p.requires_grad]
    params_dla = [p for p in module.dla.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": params_lora, "lr": t.lr_lora}, {"params": params_dla, "lr": t.lr_dla}],
        betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon, weight_decay=t.weight_decay,
    )
    # accelerate steps a prepared scheduler once per process per step (as in diffusers' scripts).
    scheduler = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=t.warmup_steps * accelerator.num_processes,
                              num_training_steps=config.total_steps * accelerator.num_processes)
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    rng = TrainRNG(t.seed + accelerator.process_index)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(rng, progress)

    def save_hook(models, weights, folder):
        if weights:  # DDP / single process: keep only DLA + LoRA, never the frozen base
            from safetensors.torch import save_file

            save_file(trainable_state_dict(accelerator.unwrap_model(models[0])), str(Path(folder) / TRAINABLE_FILE))
            weights.clear()

    def load_hook(models, folder):
        if (Path(folder) / TRAINABLE_FILE).is_file():
            load_trainable(accelerator.unwrap_model(models[0]), Path(folder) / TRAINABLE_FILE)
            models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
    start_step = progress.step
    end_step = config.total_steps if stop_at_step is None else min(stop_at_step, config.total_steps)

    sampler = StreamSampler(len(dataset), t.batch_size, t.seed, accelerator.process_index, accelerator.num_processes,
                            start_batch=start_step * t.gradient_accumulation_steps)
    loader = torch.utils.data.DataLoader(dataset, batch_size=t.batch_size, sampler=sampler, collate_fn=collate_samples,
                                         num_workers=t.num_workers, generator=torch.Generator().manual_seed(t.seed))
    batches = iter(loader)
    csv_path = output_dir / LOSS_CSV
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        _truncate_csv(csv_path, start_step)
        if t.tensorboard:
            accelerator.init_trackers("dla_train", config=_flat(config.to_dict()))
    bar = tqdm(total=config.total_steps, initial=start_step, desc="train", disable=not (t.progress_bar and accelerator.is_main_process))
    losses: list[float] = []
    started = time.perf_counter()
    module.train()
    step = start_step
    while step < end_step:
        stage = config.stage_at(step)
        step_loss = torch.zeros((), device=accelerator.device)
        for _ in range(t.gradient_accumulation_steps):
            batch = _to_device(next(batches), accelerator.device)
            size = batch["target"].shape[0]
            image_tokens = (batch["target"].shape[-2] // 2) * (batch["target"].shape[-1] // 2)
            inputs = StepInputs(
                noise=torch.randn(batch["target"].shape, generator=rng.generator),
                sigmas=sample_sigmas(config, size, image_tokens, rng.generator),
                events=sample_events(config, stage, size, rng.generator),
            )
            with accelerator.accumulate(module):
                with accelerator.autocast():
                    loss = module(batch, inputs.noise, inputs.sigmas, inputs.events, stage)
                accelerator.backward(loss)
                if accelerator.sync_gradients and t.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params_lora + params_dla, t.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += loss.detach() / t.gradient_accumulation_steps
        step += 1
        progress.step = step
        value = float(accelerator.gather(step_loss[None]).mean())
        losses.append(value)
        lr = scheduler.get_last_lr()[0]
        if accelerator.is_main_process:
            _append_csv(csv_path, step, stage, value, lr, time.perf_counter() - started)
            if t.tensorboard:
                accelerator.log({"loss": value, "lr": lr, "stage": stage}, step=step)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}", stage=stage)
        if step % t.checkpoint_every == 0 or step == end_step or step == t.stage1_steps:
            _save_checkpoint(accelerator, output_dir, step, t.keep_checkpoints)
    bar.close()
    accelerator.wait_for_everyone()
    result = TrainResult(output_dir, start_step, step, losses, time.perf_counter() - started)
    if export and step >= config.total_steps and accelerator.is_main_process:
        from .export import export_module

        result.export_dir = export_module(accelerator.unwrap_model(module), config, output_dir / "final")
    if t.tensorboard:
        accelerator.end_training()
    return result


def _save_checkpoint(accelerator, output_dir: Path, step: int, keep: int) -> None:
    folder = output_dir / CHECKPOINT_DIR / f"{CHECKPOINT_PREFIX}{step:07d}"
    accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def _to_device(batch: dict, device) -> dict:
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            moved[key] = value.to(device, non_blocking=True)
        elif key == "references":
            moved[key] = [[r.to(device, non_blocking=True) for r in refs] for refs in value]
        else:
            moved[key] = value
    return moved


def _truncate_csv(path: Path, start_step: int) -> None:
    """Keep rows of steps <= start_step (a resume rewrites what came after its checkpoint)."""
    if not path.is_file():
        path.write_text("step,stage,loss,lr,seconds\n")
        return
    rows = list(csv.reader(path.read_text().splitlines()))
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= start_step]
    path.write_text("\n".join(",".join(r) for r in kept) + "\n")


def _append_csv(path: Path, step: int, stage: int, loss: float, lr: float, seconds: float) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f"{step},{stage},{loss:.8g},{lr:.6g},{seconds:.2f}\n")


def read_loss_csv(path: str | Path) -> list[tuple[int, int, float]]:
    """(step, stage, loss) rows of a run's ``loss.csv``."""
    rows = list(csv.DictReader(Path(path).read_text().splitlines()))
    return [(int(r["step"]), int(r["stage"]), float(r["loss"])) for r in rows]


def _flat(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
