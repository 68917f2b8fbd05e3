"""Export trained weights: a DLA checkpoint (``save_dla`` format) and a FLUX.1 / FLUX.2 LoRA safetensors.

LoRA file format: diffusers/peft names with the ``transformer.`` prefix, e.g.
``transformer.transformer_blocks.0.attn.to_q.lora_A.weight`` [rank, in] and ``...lora_B.weight``
[out, rank]. ComfyUI maps these names onto its own FLUX layout (``comfy.lora.model_lora_keys_unet``
via ``comfy.utils.flux_to_diffusers``: q/k/v become slices of the fused qkv weights), and diffusers'
``load_lora_weights`` / ``load_lora_adapter`` read them directly. FLUX.2 LoRAs use diffusers'
``Flux2Transformer2DModel`` names the same way (single blocks: ``attn.to_qkv_mlp_proj`` / ``attn.to_out``,
which ComfyUI maps to ``linear1`` / ``linear2``; see :mod:`dla_core.flux.flux2_weights`). The LoRA scale
``alpha / rank`` is folded into ``lora_B`` and no ``alpha`` tensors are written, so every loader applies exactly the
trained delta at strength 1.0. Metadata: ``format``, ``rank``, ``alpha``, ``target_modules``.

A run needs only its own folder to be exported: training stores the feature cache's metadata (MLLM
family, layer count, width, layers held) there as ``features.json``, so the cache can be deleted after
training. A run from before that file reads it from the cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..checkpoint import save_dla
from ..errors import DLAInputError
from .data import CachedFeatureDataset, write_json_atomic
from .module import TRAINABLE_FILE, build_module, list_checkpoints, load_trainable

LORA_FORMAT = "comfyui-dla-subject/flux-lora"
DLA_FILE = "dla.safetensors"
LORA_FILE = "lora.safetensors"
RUN_FEATURES_FILE = "features.json"  # in the run's output_dir: the feature cache's metadata


def save_run_features(output_dir: str | Path, feature_meta: dict) -> Path:
    """Store the feature cache's metadata with the run (written when training starts), for :func:`run_features`."""
    path = Path(output_dir) / RUN_FEATURES_FILE
    write_json_atomic(path, feature_meta)
    return path


def run_features(config) -> dict:
    """The feature metadata a run was trained on: stored with the run, or, for an older run, the cache's."""
    stored = Path(config.train.output_dir) / RUN_FEATURES_FILE
    if stored.is_file():
        return json.loads(stored.read_text())
    try:
        return CachedFeatureDataset(config.data.cache_dir).feature_meta
    except DLAInputError as exc:
        raise DLAInputError(
            f"The run in '{stored.parent}' has no {RUN_FEATURES_FILE} (trained before runs stored it), so export needs "
            f"its feature cache, which is unusable: {exc} Prepare the cache again with the run's config to export it."
        ) from exc


def lora_state_dict(transformer) -> tuple[dict[str, torch.Tensor], dict]:
    """The transformer's peft LoRA as ``transformer.*.lora_A/B.weight`` tensors (scale folded into B)."""
    from peft.utils import get_peft_model_state_dict

    peft_config = transformer.peft_config["default"]
    scale = float(peft_config.lora_alpha) / float(peft_config.r)
    state = get_peft_model_state_dict(transformer, adapter_name="default")
    if not state:
        raise DLAInputError("The FLUX transformer carries no LoRA adapter to export.")
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach().float().cpu()
        if ".lora_B." in name:
            tensor = tensor * scale
        out[f"transformer.{name}"] = tensor.contiguous()
    info = {
        "rank": int(peft_config.r),
        "alpha": float(peft_config.lora_alpha),
        "scale_folded": scale,
        "target_modules": sorted(peft_config.target_modules),
    }
    return out, info


def save_lora(transformer, path: str | Path, dtype: torch.dtype = torch.bfloat16, extra: dict | None = None) -> Path:
    """Write the LoRA of ``transformer`` to ``path`` (.safetensors) in ComfyUI/diffusers format."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise DLAInputError(f"LoRA files are written as .safetensors; got '{path.name}'.")
    state, info = lora_state_dict(transformer)
    state = {k: v.to(dtype).contiguous() for k, v in state.items()}
    metadata = {
        "format": LORA_FORMAT,
        "lora_info": json.dumps(info),
        **{k: json.dumps(v) for k, v in (extra or {}).items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path


def export_module(module, config, out_dir: str | Path, lora_dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write ``dla.safetensors`` + ``lora.safetensors`` of a trained :class:`DLAFluxTrainModule`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dla = module.dla
    recipe = {
        "stage1_steps": config.train.stage1_steps,
        "stage2_steps": config.train.stage2_steps,
        "lora_rank": config.lora.rank,
        "reference_method": module.reference_method,  # the family's default resolved
        "family": module.family,
        "dropout": dict(vars(config.dropout)),
        "guidance": config.train.guidance,
    }
    dla.config.extra = {**dla.config.extra, "training": recipe}
    save_dla(dla, out_dir / DLA_FILE)
    save_lora(module.transformer, out_dir / LORA_FILE, dtype=lora_dtype, extra={"training": recipe})
    return out_dir


def export_checkpoint(
    config, checkpoint: str | Path | None, out_dir: str | Path, lora_dtype: torch.dtype = torch.bfloat16
) -> Path:
    """Rebuild the module from the config, load a training checkpoint's weights, export them.

    ``checkpoint``: a ``checkpoints/step-*`` folder, or None for the newest one of the run.
    """
    output_dir = Path(config.train.output_dir)
    if checkpoint is None:
        found = list_checkpoints(output_dir)
        if not found:
            raise DLAInputError(f"No checkpoints under '{output_dir}'. Train first or pass --checkpoint.")
        checkpoint = found[-1]
    checkpoint = Path(checkpoint)
    if not (checkpoint / TRAINABLE_FILE).is_file():
        raise DLAInputError(f"'{checkpoint}' holds no {TRAINABLE_FILE}: not a checkpoint of this trainer.")
    module = build_module(config, run_features(config))
    load_trainable(module, checkpoint / TRAINABLE_FILE)
    return export_module(module, config, out_dir, lora_dtype)
