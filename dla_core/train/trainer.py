"""Two-stage training of the DLA and a FLUX.1 / FLUX.2 LoRA on MLLM features (accelerate + peft + diffusers).

One optimisation step:

1. a batch of cached samples (MLLM hidden states of all layers, target latent, reference latents);
2. per sample, from the run's own seeded generator: noise, flow time ``sigma`` and a condition
   dropout event (``DropoutConfig``);
3. DLA(features) -> context tokens + pooled; samples whose MLLM condition is dropped get the DLA's
   learned null sequence (``DualLayerAggregation.drop_to_null``: the same "MLLM off" the
   sampler's stage 3 uses);
4. ``x_t = (1 - sigma) * x_0 + sigma * noise``; the LoRA'd Flux(2)Transformer2DModel predicts the
   velocity ``noise - x_0`` through inference's own FLUX call (:func:`dla_core.train.family.velocity_tokens`:
   FLUX.1's :func:`dla_core.flux.references.flux_velocity_tokens`, ``[text ; image ; references]`` tokens in
   ComfyUI's placement, plus a key mask over context padding; FLUX.2's
   :func:`dla_core.flux.flux2.flux2_velocity_tokens`, ComfyUI's FLUX.2 layout); stage 2 adds the reference
   latents of samples whose identity is kept; MSE on the target tokens only.

The loss lives in :mod:`.module` (:class:`DLAFluxTrainModule`); here: the per-step randomness, the
data order, and the loop (:func:`setup_training`, :func:`train_step`, :func:`train`).

Timestep sampling (as diffusers' ``train_dreambooth_lora_flux.py``): ``u`` from
``compute_density_for_timestep_sampling`` (``logit_normal`` default, mean 0, std 1: sigmoid of a
normal; ``uniform``; SD3's ``mode``), then optionally shifted: ``resolution`` applies FLUX's
inference shift ``mu = calculate_mu(image tokens)`` (:mod:`dla_core.flux.sampling`),
``sigma = e^mu / (e^mu + 1/u - 1)``;
``fixed`` applies ``sigma = s*u / (1 + (s-1)*u)``. The training guidance value is fed to
FLUX.1-dev's (and FLUX.2 [dev]'s) guidance embedding (diffusers' FLUX.1 default 3.5; [klein] has none).
The loss is unweighted.

Exact resumption: the data order is a pure function of (seed, step)
(:class:`dla_core.train.buckets.BucketBatchSampler`: every batch from one aspect bucket),
all per-step randomness comes from :class:`TrainRNG`, whose state every process checkpoints with
the optimizer, scheduler and global RNG states accelerate saves, so a resumed run reproduces the
losses of an uninterrupted one, on one process or many. Checkpoints hold only the trainable weights
(DLA + LoRA), not the frozen base (FSDP2 / DeepSpeed: their own model state besides, see the accelerate configs).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import read_dla_config
from ..dla import check_mllm_compatible
from ..dtypes import DTYPES
from ..errors import DLAInputError
from ..flux.sampling import calculate_mu
from ..spec import MLLMSpec
from . import family as families
from .buckets import BucketBatchSampler
from .config import DLATrainingConfig, require_paths
from .data import collate_samples, write_json_atomic
from .export import export_module, save_run_features
from .levers import check_levers, describe_trainable, make_optimizer
from .module import (
    BOTH_OFF,
    CHECKPOINT_COMPLETE,
    CHECKPOINT_DIR,
    CHECKPOINT_PREFIX,
    IDENTITY_OFF,
    KEEP_BOTH,
    MLLM_OFF,
    PARTIAL_PREFIX,
    REPLACED_PREFIX,
    TRAINABLE_FILE,
    DLAFluxTrainModule,
    add_lora,
    build_module,
    checkpoint_is_complete,
    list_checkpoints,
    list_incomplete_checkpoints,
    load_trainable,
    trainable_state_dict,
)
from .online import feature_dataset
from .validation import VALIDATION_CSV, Validator, run_validation, training_buckets, truncate_validation_csv

logger = logging.getLogger(__name__)
LOSS_CSV = "loss.csv"

__all__ = [  # the module's own API plus the names of .module it re-exports for callers of the trainer
    "BOTH_OFF",
    "CHECKPOINT_DIR",
    "CHECKPOINT_PREFIX",
    "IDENTITY_OFF",
    "KEEP_BOTH",
    "LOSS_CSV",
    "MLLM_OFF",
    "TRAINABLE_FILE",
    "DLAFluxTrainModule",
    "StepInputs",
    "TrainRNG",
    "TrainResult",
    "TrainingProgress",
    "TrainingRun",
    "add_lora",
    "build_module",
    "checkpoint_is_complete",
    "list_checkpoints",
    "list_incomplete_checkpoints",
    "load_trainable",
    "preflight",
    "resolve_resume",
    "sample_events",
    "sample_sigmas",
    "setup_training",
    "train",
    "train_step",
    "trainable_state_dict",
]

# ----------------------------------------------------------------------------- reproducible state


class TrainRNG:
    """The generator of all per-step randomness (noise, sigmas, dropout) of one process.

    Checkpointed twice: as a registered object (accelerate writes the main process's only) and, per process,
    as ``train_rng_<rank>.safetensors`` in the checkpoint folder (:meth:`save` / :meth:`load`), so that after a
    resume every process continues its own stream, not the main process's.
    """

    def __init__(self, seed: int, rank: int = 0):
        self.rank = rank
        self.generator = torch.Generator().manual_seed(seed + rank)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def file(self, folder: Path) -> Path:
        return Path(folder) / f"train_rng_{self.rank}.safetensors"

    def save(self, folder: Path) -> None:
        save_file({"generator": self.generator.get_state()}, str(self.file(folder)))

    def load(self, folder: Path) -> None:
        """This process's state from a checkpoint (a checkpoint from before the per-process files keeps the
        registered object's state)."""
        if self.file(folder).is_file():
            self.generator.set_state(load_file(str(self.file(folder)))["generator"])


@dataclass
class TrainingProgress:
    """Optimisation steps done; checkpointed by accelerate."""

    step: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


# ----------------------------------------------------------------------------- per-step randomness


@dataclass
class StepInputs:
    """Random inputs of one step, drawn from :class:`TrainRNG` (CPU)."""

    noise: torch.Tensor  # [batch, C, H, W]
    sigmas: torch.Tensor  # [batch]
    events: torch.Tensor  # [batch] long, KEEP_BOTH / MLLM_OFF / IDENTITY_OFF / BOTH_OFF


def sample_sigmas(
    config: DLATrainingConfig, batch_size: int, image_tokens: int, generator: torch.Generator
) -> torch.Tensor:
    """Flow times in (0, 1) per the config (see module docstring)."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    t = config.train
    scheme = {"uniform": "none"}.get(t.timestep_sampling, t.timestep_sampling)
    u = compute_density_for_timestep_sampling(
        scheme, batch_size, logit_mean=t.logit_mean, logit_std=t.logit_std, mode_scale=t.mode_scale, generator=generator
    )
    u = u.clamp(1e-5, 1 - 1e-5)
    if t.timestep_shift == "resolution":
        mu = calculate_mu(image_tokens)
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
    trainable_params: int = 0  # LoRA + DLA, reported at start
    optimizer_state_bytes: int = 0  # by dla_core.train.estimate.optimizer_state_bytes


def preflight(config: DLATrainingConfig):
    """All cheap checks before any model loads: paths, the family's diffusers, DLA <-> FLUX / FLUX.2, cache, MLLM.

    The family (FLUX.1 / FLUX.2) comes from the transformer's config (:mod:`.family`); a FLUX.2 run on a
    diffusers without FLUX.2 is refused first, naming the version it needs.
    """
    require_paths(config, ["model.flux", "model.init_dla", "train.output_dir"], "train")
    family, transformer_config = families.resolve_family(config)
    families.check_family_runtime(family)
    families.check_family_settings(family, config)
    dataset = feature_dataset(config)  # the cache, or the manifest for online features (models load later)
    dla_config = read_dla_config(config.model.init_dla)
    families.check_dla_fits_transformer(family, transformer_config, dla_config, f"'{config.model.flux}'")
    meta = dataset.feature_meta
    check_mllm_compatible(
        dla_config,
        MLLMSpec(meta["family"], int(meta["num_layers"]), int(meta["width"]), meta.get("model_name", "")),
        held_layers=meta["layer_indices"],
        source=dataset.feature_source,
        fix_missing="Prepare the cache again keeping these layers (data.mllm_layers).",
    )
    return dataset


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    """``None`` (fresh), ``"latest"`` (newest complete checkpoint, or fresh if none) or a checkpoint folder.

    ``"latest"`` skips folders a killed run left half-written, naming them in a warning; an explicit
    folder that is incomplete is refused, naming the newest complete one.
    """
    if resume is None:
        return None
    found = list_checkpoints(output_dir)
    if resume == "latest":
        skipped = list_incomplete_checkpoints(output_dir)
        if skipped:
            logger.warning(
                "resume: ignored %d incomplete checkpoint folder(s) a stopped run left while writing them: %s; "
                "resuming from %s",
                len(skipped),
                ", ".join(str(p) for p in skipped),
                found[-1] if found else "the start (no complete checkpoint)",
            )
        return found[-1] if found else None
    path = Path(resume)
    if not (path / TRAINABLE_FILE).is_file() and not path.name.startswith(CHECKPOINT_PREFIX):
        raise DLAInputError(
            f"'{resume}' is not a training checkpoint (no {TRAINABLE_FILE}). Use a folder under "
            f"{output_dir / CHECKPOINT_DIR} or 'latest'."
        )
    if not checkpoint_is_complete(path):
        newest = f"the newest complete one is {found[-1]}" if found else "this run has no complete checkpoint yet"
        raise DLAInputError(
            f"'{resume}' is an incomplete checkpoint (the run stopped while writing it; no {CHECKPOINT_COMPLETE}): "
            f"{newest}. Use --resume latest, which skips incomplete folders."
        )
    return path


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainingRun:
    """Everything :func:`train` sets up once: accelerate state, the prepared module / optimizer /
    scheduler, the checkpointed RNG and progress, and the endless batch stream."""

    config: DLATrainingConfig
    accelerator: object
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    trainable: list[torch.Tensor]  # LoRA + DLA parameters, for gradient clipping
    rng: TrainRNG
    progress: TrainingProgress
    batches: object  # iterator over collated micro-batches
    output_dir: Path
    start_step: int
    end_step: int
    trainable_params: int = 0
    optimizer_state_bytes: int = 0
    validator: object | None = None  # dla_core.train.validation.Validator when train.sample_every > 0

    @property
    def csv_path(self) -> Path:
        return self.output_dir / LOSS_CSV


def setup_training(
    config: DLATrainingConfig, resume: str | None = None, stop_at_step: int | None = None
) -> TrainingRun:
    """Checks, accelerate, module + LoRA, optimizer, LR schedule, checkpoint hooks, resume, data stream, outputs."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler

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
    check_levers(config, accelerator.device)  # a missing bitsandbytes / torchao is refused before models load
    if config.data.features == "online":  # before the seed: loading must not move the LoRA's initial draw
        dataset.load(accelerator.device)  # the frozen MLLM + VAE, on this process's GPU
    validator = None
    if t.sample_every > 0:  # before the seed too: it may load the MLLM (cached features) and the VAE
        validator = Validator(
            config, dataset, accelerator.device, getattr(dataset, "mllm", None), getattr(dataset, "vae", None)
        )
    set_seed(t.seed)  # the LoRA's A matrices are drawn from the global generator
    base_dtype = DTYPES.get(t.mixed_precision, torch.float32)  # "no" -> fp32
    module = build_module(config, dataset.feature_meta, base_dtype)
    params_lora = [p for p in module.transformer.parameters() if p.requires_grad]
    params_dla = [p for p in module.dla.parameters() if p.requires_grad]
    optimizer = make_optimizer([{"params": params_lora, "lr": t.lr_lora}, {"params": params_dla, "lr": t.lr_dla}], t)
    trainable_params, state_bytes, report = describe_trainable(params_lora, params_dla, t.optimizer)
    logger.info(report)
    accelerator.print(report)
    # accelerate steps a prepared scheduler once per process per step (as in diffusers' scripts).
    scheduler = get_scheduler(
        t.lr_scheduler,
        optimizer,
        num_warmup_steps=t.warmup_steps * accelerator.num_processes,
        num_training_steps=config.total_steps * accelerator.num_processes,
    )
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    rng = TrainRNG(t.seed, accelerator.process_index)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(rng, progress)
    _register_checkpoint_hooks(accelerator)
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        rng.load(resume_dir)  # this process's own stream (the registered object held the main process's)
    start_step = progress.step
    end_step = config.total_steps if stop_at_step is None else min(stop_at_step, config.total_steps)

    sampler = BucketBatchSampler(
        training_buckets(config, dataset),  # held-out validation samples left out
        t.batch_size,
        t.seed,
        accelerator.process_index,
        accelerator.num_processes,
        start_batch=start_step * t.gradient_accumulation_steps,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_samples,
        num_workers=t.num_workers,
        generator=torch.Generator().manual_seed(t.seed),
    )
    run = TrainingRun(
        config,
        accelerator,
        module,
        optimizer,
        scheduler,
        params_lora + params_dla,
        rng,
        progress,
        iter(loader),
        output_dir,
        start_step,
        end_step,
        trainable_params,
        state_bytes,
        validator,
    )
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output_dir / "config.json", config.to_dict())
        save_run_features(output_dir, dataset.feature_meta)  # export works after the cache is deleted
        _truncate_csv(run.csv_path, start_step)
        if validator is not None:
            truncate_validation_csv(output_dir / VALIDATION_CSV, start_step)
        if t.tensorboard:
            accelerator.init_trackers("dla_train", config=_flat(config.to_dict()))
    return run


def _register_checkpoint_hooks(accelerator) -> None:
    """Checkpoints hold only the trainable weights (DLA + LoRA) in ``trainable.safetensors``, never the frozen base."""

    # DDP / one process: ``weights`` holds what accelerate would save, replaced by the trainable weights. FSDP2 and
    # DeepSpeed save (and load) their own model state, frozen base included, and pass no weights / no models; the
    # trainable weights are still gathered (FSDP2: from every process's shards) into the file export reads.
    def save_hook(models, weights, folder):
        state = trainable_state_dict(accelerator.unwrap_model(models[0]))  # every process (a collective on FSDP2)
        if accelerator.is_main_process:
            save_file(state, str(Path(folder) / TRAINABLE_FILE))
        weights.clear()

    def load_hook(models, folder):
        if models and (Path(folder) / TRAINABLE_FILE).is_file():
            load_trainable(accelerator.unwrap_model(models[0]), Path(folder) / TRAINABLE_FILE)
            models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def train_step(run: TrainingRun, stage: int) -> float:
    """One optimisation step (``gradient_accumulation_steps`` micro-batches); returns its loss averaged over processes.

    Per micro-batch: next batch, then noise, sigmas and dropout events from the run's generator (in
    that order: a resumed run draws exactly what an uninterrupted one draws), loss, backward, and the
    optimizer / LR step accelerate lets through on the last micro-batch.
    """
    config, accelerator, t = run.config, run.accelerator, run.config.train
    step_loss = torch.zeros((), device=accelerator.device)
    for _ in range(t.gradient_accumulation_steps):
        batch = _to_device(next(run.batches), accelerator.device)
        size = batch["target"].shape[0]
        image_tokens = (batch["target"].shape[-2] // 2) * (batch["target"].shape[-1] // 2)
        inputs = StepInputs(
            noise=torch.randn(batch["target"].shape, generator=run.rng.generator),
            sigmas=sample_sigmas(config, size, image_tokens, run.rng.generator),
            events=sample_events(config, stage, size, run.rng.generator),
        )
        with accelerator.accumulate(run.module):
            with accelerator.autocast():
                loss = run.module(batch, inputs.noise, inputs.sigmas, inputs.events, stage)
            accelerator.backward(loss)
            if accelerator.sync_gradients and t.max_grad_norm > 0:
                accelerator.clip_grad_norm_(run.trainable, t.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
        step_loss += loss.detach() / t.gradient_accumulation_steps
    return float(accelerator.gather(step_loss[None]).mean())


def train(
    config: DLATrainingConfig,
    resume: str | None = None,
    stop_at_step: int | None = None,
    export: bool = True,
) -> TrainResult:
    """Run (or resume) the two-stage training; returns the losses of the steps run here.

    ``stop_at_step``: stop (with a checkpoint) once that many optimisation steps are done.
    Reads as: :func:`setup_training`, then per step :func:`train_step`, log, checkpoint; then export.
    """
    run = setup_training(config, resume, stop_at_step)
    t, accelerator = config.train, run.accelerator
    bar = tqdm(
        total=config.total_steps,
        initial=run.start_step,
        desc="train",
        disable=not (t.progress_bar and accelerator.is_main_process),
    )
    losses: list[float] = []
    started = time.perf_counter()
    run.module.train()
    step = run.start_step
    while step < run.end_step:
        stage = config.stage_at(step)
        value = train_step(run, stage)
        step += 1
        run.progress.step = step
        losses.append(value)
        lr = run.scheduler.get_last_lr()[0]
        if accelerator.is_main_process:
            _append_csv(run.csv_path, step, stage, value, lr, time.perf_counter() - started)
            if t.tensorboard:
                accelerator.log({"loss": value, "lr": lr, "stage": stage}, step=step)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}", stage=stage)
        if t.sample_every and step % t.sample_every == 0:
            run_validation(run, step, stage)
        if step % t.checkpoint_every == 0 or step == run.end_step or step == t.stage1_steps:
            _save_checkpoint(accelerator, run.output_dir, step, t.keep_checkpoints, run.rng)
    bar.close()
    accelerator.wait_for_everyone()
    result = TrainResult(run.output_dir, run.start_step, step, losses, time.perf_counter() - started)
    result.trainable_params, result.optimizer_state_bytes = run.trainable_params, run.optimizer_state_bytes
    if export and step >= config.total_steps and accelerator.is_main_process:
        result.export_dir = export_module(accelerator.unwrap_model(run.module), config, run.output_dir / "final")
    if t.tensorboard:
        accelerator.end_training()
    return result


def _save_checkpoint(accelerator, output_dir: Path, step: int, keep: int, rng: TrainRNG | None = None) -> None:
    """Write the checkpoint of ``step`` so that a kill at any moment leaves the previous ones usable.

    Every process writes into ``checkpoints/.partial-step-N``; then the main process adds the
    :data:`CHECKPOINT_COMPLETE` marker and renames the folder to ``step-N`` (a rename is atomic), and only
    after that removes checkpoints beyond ``keep`` and what killed runs left. ``--resume latest`` only
    ever sees complete folders.
    """
    root = output_dir / CHECKPOINT_DIR
    final = root / f"{CHECKPOINT_PREFIX}{step:07d}"
    partial = root / f"{PARTIAL_PREFIX}{final.name}"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if rng is not None:
        rng.save(partial)  # every process its own generator (accelerate writes the main process's only)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker = partial / CHECKPOINT_COMPLETE
        with marker.open("w", encoding="utf-8") as handle:
            json.dump({"step": step, "files": sorted(p.name for p in partial.iterdir())}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if final.exists():  # a resumed run reaching this step again: move the old one aside first
            replaced = root / f"{REPLACED_PREFIX}{final.name}"
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(final, replaced)
        os.replace(partial, final)
        for old in list_checkpoints(output_dir)[:-keep] + list_incomplete_checkpoints(output_dir):
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


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


def _flat(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
