"""The trained module (DLA + LoRA'd FLUX.1 / FLUX.2 transformer), its loss, and its checkpoint files.

:class:`DLAFluxTrainModule` is what accelerate wraps; its ``forward`` is one flow-matching loss:
condition dropout through :meth:`DualLayerAggregation.drop_to_null` (the "MLLM off" the sampler's
stage 3 uses) and the FLUX call of inference (:func:`dla_core.train.family.velocity_tokens`: FLUX.1's
:func:`dla_core.flux.references.flux_velocity_tokens` with a key mask over the context padding, or FLUX.2's
:func:`dla_core.flux.flux2.flux2_velocity_tokens` with ComfyUI's 512-token padding), text, image and reference
tokens laid out as ComfyUI does.
Used by :mod:`.trainer` (the loop) and :mod:`.export` (checkpoint -> DLA + LoRA files).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..checkpoint import load_dla
from ..errors import DLAInputError
from ..features import MLLMFeatures
from . import family as families
from .config import FLUX_ATTENTION_TARGETS, DLATrainingConfig
from .levers import quantize_base

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"
TRAINABLE_FILE = "trainable.safetensors"
# Crash-safe checkpoints: written into checkpoints/.partial-step-N, the marker last, then renamed to step-N.
CHECKPOINT_COMPLETE = "checkpoint-complete.json"
PARTIAL_PREFIX = ".partial-"
REPLACED_PREFIX = ".replaced-"  # a step-N being replaced (a resumed run that reaches step N again)
LEGACY_CHECKPOINT_FILES = ("optimizer.bin", "scheduler.bin", "random_states_0.pkl")  # accelerate's, before the marker

# Dropout event codes, per sample.
KEEP_BOTH, MLLM_OFF, IDENTITY_OFF, BOTH_OFF = 0, 1, 2, 3


class DLAFluxTrainModule(nn.Module):
    """DLA + LoRA'd FLUX transformer; ``forward`` returns the flow-matching loss of a batch.

    One module so that DDP/FSDP wrap every trainable weight (the DLA's null sequence included).
    """

    def __init__(
        self,
        dla: nn.Module,
        transformer: nn.Module,
        feature_meta: dict,
        guidance: float,
        reference_method: str,
        family: str = "flux",
    ):
        super().__init__()
        self.dla = dla
        self.transformer = transformer
        self.feature_meta = feature_meta
        self.guidance = guidance
        self.reference_method = reference_method
        self.family = family  # "flux" | "flux2" (dla_core.train.family)

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
        """DLA output with the learned null sequence where ``mllm_off`` (:meth:`DualLayerAggregation.drop_to_null`).

        Returns context [batch, tokens, C], mask [batch, tokens] bool, pooled [batch, P].
        """
        cond = self.dla.drop_to_null(self.dla(self.features(batch)), mllm_off)
        return cond.tokens, cond.token_mask, cond.pooled

    def forward(
        self, batch: dict, noise: torch.Tensor, sigmas: torch.Tensor, events: torch.Tensor, stage: int
    ) -> torch.Tensor:
        x0 = batch["target"]  # [batch, C, H, W]
        device = x0.device
        noise, sigmas = noise.to(device, x0.dtype), sigmas.to(device, x0.dtype)
        mllm_off = (events == MLLM_OFF) | (events == BOTH_OFF)
        identity_on = (events == KEEP_BOTH) | (events == MLLM_OFF) if stage == 2 else torch.zeros_like(mllm_off)
        context, context_mask, pooled = self.conditioning(batch, mllm_off)
        s = sigmas[:, None, None, None]
        noisy = (1 - s) * x0 + s * noise
        target = noise - x0  # flow-matching velocity

        # Samples whose extra image tokens share a layout run together (diffusers takes one id table per call);
        # FLUX.2 also needs one padded text length per call (ComfyUI pads each context to 512 tokens).
        groups: dict[tuple, list[int]] = {}
        valid_tokens = context_mask.sum(1).tolist()
        for row in range(x0.shape[0]):
            refs = batch["references"][row] if bool(identity_on[row]) else []
            key = (tuple(tuple(r.shape) for r in refs), families.text_length_key(self.family, int(valid_tokens[row])))
            groups.setdefault(key, []).append(row)
        per_sample = []
        for (layout, _), rows in groups.items():
            idx = torch.tensor(rows, device=device)
            refs = [
                torch.stack([batch["references"][r][k] for r in rows]).to(device, x0.dtype) for k in range(len(layout))
            ]
            prediction = families.velocity_tokens(
                self.family,
                self.transformer,
                noisy[idx],
                sigmas[idx],
                context[idx],
                context_mask[idx],
                None if pooled is None else pooled[idx],
                self.guidance,
                refs,
                self.reference_method,
            ).float()  # target tokens only
            expected = families.pack_target(self.family, target[idx]).float()
            per_sample.append(((prediction - expected) ** 2).mean(dim=(1, 2)))
        losses = torch.cat(per_sample)  # [batch], in group order
        return losses.mean()


# ----------------------------------------------------------------------------- building and checkpoint files


def add_lora(transformer: nn.Module, config: DLATrainingConfig, family: str = "flux") -> None:
    """Freeze the base transformer and add the peft LoRA adapter (B = 0, so the start is the base model).

    FLUX.2: the default (FLUX.1) target list stands for FLUX.2's own (``family.default_lora_targets``), and
    targets are resolved to full ``Linear`` names (:func:`family.lora_target_names`).
    """
    from peft import LoraConfig

    lora = config.lora
    targets = list(lora.target_modules)
    if family == "flux2":
        if tuple(targets) == FLUX_ATTENTION_TARGETS:
            targets = list(families.default_lora_targets(family))
        targets = families.lora_target_names(transformer, targets) or targets
    transformer.requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha if lora.alpha is not None else lora.rank,
            lora_dropout=lora.dropout,
            init_lora_weights="gaussian",
            target_modules=targets,
        )
    )
    if not any(p.requires_grad for p in transformer.parameters()):
        raise DLAInputError(f"lora.target_modules {lora.target_modules} match no layer of the FLUX transformer.")
    for param in transformer.parameters():
        if param.requires_grad:
            param.data = param.data.float()  # trainable weights in fp32 even over a bf16 base


def build_module(
    config: DLATrainingConfig, feature_meta: dict, base_dtype: torch.dtype = torch.float32
) -> DLAFluxTrainModule:
    """Load FLUX.1 / FLUX.2 (frozen, + LoRA; family from :func:`family.resolve_family`) and the init DLA (trainable)
    into one module."""
    family, _ = families.resolve_family(config)
    families.check_family_runtime(family)
    reference_method = families.default_reference_method(family, config.train.reference_method)
    transformer = families.load_transformer(family, config.model.flux, dtype=base_dtype)
    quantize_base(transformer, config.model.quantize_base)  # the frozen base in int8 (torchao), before the LoRA
    add_lora(transformer, config, family)
    if config.train.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    dla = load_dla(config.model.init_dla, dtype=torch.float32)
    dla.requires_grad_(True)
    return DLAFluxTrainModule(dla, transformer, feature_meta, config.train.guidance, reference_method, family)


def trainable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights (DLA + LoRA) as full CPU tensors; FSDP2's sharded parameters (DTensors) are gathered,
    so every process must call it."""
    state = {}
    for name, param in module.named_parameters():
        if param.requires_grad:
            full = param.full_tensor() if hasattr(param, "full_tensor") else param
            state[name] = full.detach().contiguous().cpu()
    return state


def load_trainable(module: nn.Module, path: Path) -> None:
    """Load a ``trainable.safetensors`` into the matching parameters (all must be present)."""
    state = load_file(str(path))
    params = dict(module.named_parameters())
    expected = {name for name, p in params.items() if p.requires_grad}
    missing = sorted(expected - set(state))
    if missing:
        raise DLAInputError(
            f"Checkpoint '{path}' lacks {len(missing)} trainable weights (e.g. {missing[0]}): "
            "it was written with another LoRA/DLA setup. Use the matching config."
        )
    with torch.no_grad():
        for name in expected:
            params[name].copy_(state[name].to(params[name].dtype))


def checkpoint_is_complete(folder: Path) -> bool:
    """True for a checkpoint the trainer finished writing: its :data:`CHECKPOINT_COMPLETE` marker (written last,
    before the folder is moved into place), or, for a run from before the marker, every file accelerate writes."""
    folder = Path(folder)
    if (folder / CHECKPOINT_COMPLETE).is_file():
        return True
    return all((folder / name).is_file() for name in (TRAINABLE_FILE, *LEGACY_CHECKPOINT_FILES))


def _checkpoint_folders(output_dir: Path) -> list[Path]:
    root = Path(output_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def list_checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first (``checkpoints/step-NNNNNNN``)."""
    return [p for p in _checkpoint_folders(output_dir) if checkpoint_is_complete(p)]


def list_incomplete_checkpoints(output_dir: Path) -> list[Path]:
    """Folders a run killed while writing a checkpoint left behind: ``step-*`` without the marker (written by an
    older trainer in place) and the trainer's own temporary ``.partial-step-*`` / ``.replaced-step-*`` folders."""
    root = Path(output_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    leftovers = [p for p in root.iterdir() if p.is_dir() and p.name.startswith((PARTIAL_PREFIX, REPLACED_PREFIX))]
    return sorted([p for p in _checkpoint_folders(output_dir) if not checkpoint_is_complete(p)] + leftovers)
