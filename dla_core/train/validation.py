"""Validation while training: every ``train.sample_every`` steps, images of a fixed validation set and a held-out
loss.

- **Images**: each ``validation.samples`` entry (references + prompt from the config) is sampled with the
  staged sampler of inference (:class:`dla_core.pipeline.DLASubjectPipeline`, over the LoRA'd transformer and
  the DLA being trained; its MLLM features are computed once at start, so the frozen MLLM does not stay
  loaded in cached mode). One PNG grid per validation step, ``samples/step-NNNNNNN.png``: a row per sample,
  [first reference | generated image]; logged to tensorboard when ``train.tensorboard`` is on. FLUX.1 only
  for now (a FLUX.2 run gets the held-out loss alone, with a warning).
- **Held-out loss**: the last ``validation.held_out`` manifest samples never enter the training stream
  (:class:`dla_core.train.buckets.BucketBatchSampler` skips them); their flow-matching loss with noise and
  flow times drawn once from ``validation.seed`` (so it is comparable across steps), both conditions kept,
  at the current stage. Rows go to ``validation.csv`` (step, stage, heldout_loss, grid).

Nothing here draws from the training generator, so a run with validation has the loss curve of one without.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..errors import DLAInputError
from .config import DLATrainingConfig, require_paths
from .data import collate_samples
from .module import KEEP_BOTH

logger = logging.getLogger(__name__)
VALIDATION_CSV = "validation.csv"
SAMPLES_DIR = "samples"


def grid_path(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / SAMPLES_DIR / f"step-{step:07d}.png"


@dataclass
class ValidationSample:
    """One validation entry with its MLLM features (CPU), computed once."""

    prompt: str
    references: list[Image.Image]
    features: object  # dla_core.features.MLLMFeatures


def held_out_indices(config: DLATrainingConfig, num_samples: int) -> list[int]:
    """The manifest indices kept out of training (the last ``validation.held_out``)."""
    count = config.validation.held_out
    if count >= num_samples:
        raise DLAInputError(
            f"validation.held_out is {count} but the data set has {num_samples} samples: keep some for training."
        )
    return list(range(num_samples - count, num_samples))


class Validator:
    """Held-out loss and validation grids of one run (built by the trainer when ``train.sample_every`` > 0)."""

    def __init__(self, config: DLATrainingConfig, dataset, device: torch.device, mllm=None, vae=None):
        self.config, self.device = config, device
        v = config.validation
        self.held_out = held_out_indices(config, len(dataset))
        generator = torch.Generator().manual_seed(v.seed)
        self.fixed = []  # (item, noise [1, C, H, W], sigma [1]) per held-out sample, drawn once
        for index in self.held_out:
            item = dataset[index]
            noise = torch.randn((1, *item["target"].shape), generator=generator)
            self.fixed.append((item, noise, torch.rand(1, generator=generator) * 0.98 + 0.01))
        self.samples: list[ValidationSample] = []
        self.vae = vae
        if v.samples:
            require_paths(config, ["model.mllm", "model.vae"], "validation images (validation.samples)")
            self.samples = self._encode_samples(mllm)
            if self.vae is None:
                from .prepare import load_training_vae

                self.vae = load_training_vae(config, device)

    def _encode_samples(self, mllm) -> list[ValidationSample]:
        from ..mllm import encode_joint, load_mllm
        from ..pipeline import load_reference_image

        d, model = self.config.data, self.config.model
        own = mllm is None
        if own:  # cached features: load the MLLM for these few encodes only
            mllm = load_mllm(model.mllm, dtype=getattr(torch, model.mllm_dtype), device=self.device)
        samples = []
        with torch.no_grad():
            for entry in self.config.validation.samples:
                references = [load_reference_image(path) for path in entry["reference"]]
                features = encode_joint(
                    mllm, entry["prompt"], references, image_size=d.mllm_image_size, layers=d.mllm_layers
                )
                samples.append(ValidationSample(entry["prompt"].strip(), references, features.to(device="cpu")))
        if own:
            del mllm
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return samples

    @torch.no_grad()
    def heldout_loss(self, module, stage: int, autocast) -> float | None:
        """Mean loss of the held-out samples with their fixed noise and flow times (None without held-out samples)."""
        if not self.fixed:
            return None
        total = 0.0
        for item, noise, sigma in self.fixed:
            batch = _to_device(collate_samples([item]), self.device)
            events = torch.full((1,), KEEP_BOTH, dtype=torch.long)
            with autocast():
                total += float(module(batch, noise, sigma, events, stage))
        return total / len(self.fixed)

    @torch.no_grad()
    def grid(self, module, autocast) -> Image.Image | None:
        """[first reference | generated] rows of the validation samples (None without samples or for FLUX.2)."""
        if not self.samples:
            return None
        if getattr(module, "family", "flux") != "flux":
            logger.warning("validation images are sampled for FLUX.1 runs only; this run logs the held-out loss")
            return None
        from ..pipeline import DLASubjectPipeline

        v = self.config.validation
        size = v.size or self.config.data.resolution
        pipe = DLASubjectPipeline(module.transformer, self.vae, None, module.dla, device=self.device)
        rows = []
        for sample in self.samples:
            with autocast():
                image = pipe(
                    sample.prompt,
                    sample.references,
                    height=size,
                    width=size,
                    num_inference_steps=v.steps,
                    guidance_scale=v.guidance,
                    tau1=v.tau1,
                    tau2=v.tau2,
                    seed=v.seed,
                    reference_method=module.reference_method,
                    features=sample.features,
                    progress=False,
                ).images[0]
            rows.append((sample.references[0], image))
        return _grid(rows, size)


def _grid(rows: list[tuple[Image.Image, Image.Image]], size: int) -> Image.Image:
    grid = Image.new("RGB", (2 * size, len(rows) * size), (255, 255, 255))
    for row, (reference, generated) in enumerate(rows):
        thumb = reference.convert("RGB").copy()
        thumb.thumbnail((size, size))
        grid.paste(thumb, ((size - thumb.width) // 2, row * size + (size - thumb.height) // 2))
        grid.paste(generated.convert("RGB").resize((size, size)), (size, row * size))
    return grid


def _to_device(batch: dict, device) -> dict:
    moved = dict(batch)
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            moved[key] = value.to(device)
    moved["references"] = [[r.to(device) for r in refs] for refs in batch["references"]]
    return moved


def truncate_validation_csv(path: Path, start_step: int) -> None:
    """Keep the rows of steps <= start_step (a resumed run writes what comes after its checkpoint again)."""
    if not path.is_file():
        path.write_text("step,stage,heldout_loss,grid\n")
        return
    lines = path.read_text().splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if line and int(line.split(",")[0]) <= start_step]
    path.write_text("\n".join(kept) + "\n")


def run_validation(run, step: int, stage: int) -> tuple[float | None, Path | None]:
    """The validation of ``step``: every process computes the held-out loss (the wrapped module may be sharded),
    the main process samples and saves the grid; logs both. Returns (held-out loss, grid path)."""
    accelerator, validator = run.accelerator, run.validator
    module = run.module
    module.eval()
    try:
        loss = validator.heldout_loss(module, stage, accelerator.autocast)
        path = None
        if accelerator.is_main_process:
            grid = validator.grid(accelerator.unwrap_model(module), accelerator.autocast)
            if grid is not None:
                path = grid_path(run.output_dir, step)
                path.parent.mkdir(parents=True, exist_ok=True)
                grid.save(path)
            with (run.output_dir / VALIDATION_CSV).open("a", encoding="utf-8") as handle:
                value = "" if loss is None else f"{loss:.8g}"
                handle.write(f"{step},{stage},{value},{'' if path is None else path.name}\n")
            if run.config.train.tensorboard:
                if loss is not None:
                    accelerator.log({"heldout_loss": loss}, step=step)
                if grid is not None:
                    import numpy as np

                    tracker = accelerator.get_tracker("tensorboard", unwrap=True)
                    tracker.add_image("validation", np.asarray(grid), step, dataformats="HWC")
    finally:
        module.train()
    accelerator.wait_for_everyone()
    return loss, path


def training_buckets(config: DLATrainingConfig, dataset) -> list:
    """The data set's buckets with the held-out samples set to None (the sampler leaves them out)."""
    buckets = list(dataset.buckets)
    if config.validation.held_out:
        for index in held_out_indices(config, len(dataset)):
            buckets[index] = None
    return buckets
