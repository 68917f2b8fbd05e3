"""``prepare``: cache MLLM features and VAE latents of the whole manifest as safetensors shards.

Training then never runs the (8B) MLLM or the VAE encoder. Layout of ``data.cache_dir``::

    cache.json                      settings fingerprint, sample/shard counts, feature shapes
    shard-00000.safetensors         samples [0, shard_size)
    shard-00001.safetensors         samples [shard_size, 2*shard_size) ...

Per sample ``j`` (manifest order) a shard holds, trimmed to the sample's valid tokens:

    {j}.hidden_states   [layers, tokens, width]   (data.cache_dtype)
    {j}.hidden_scale    [layers, tokens, 1]       float32, only for cache_dtype float8_e4m3fn (value x scale)
    {j}.image_mask      [tokens] bool             MLLM image-token positions
    {j}.text_mask       [tokens] bool             MLLM text-token positions
    {j}.target          [16, H/8, W/8] float32    VAE latent of the target at its bucket (W, H), model space
    {j}.reference.{k}   [16, h/8, w/8] float32    VAE latent of reference k, model space
                                              (FLUX.2's VAE: [128, h/16, w/16], patchified and batch-normed)

"Model space" is ``(mean latent - shift_factor) * scaling_factor`` (what FLUX sees). The
shard metadata holds the prompts and the fingerprint. **Resumable**: finished shards (present,
same fingerprint) are skipped; shards are written to a temporary name and renamed, so a killed
run leaves no half shard. **Shardable**: process ``rank`` of ``world`` does shards
``rank, rank + world, ...`` (rank/world from ``accelerate launch`` or ``--rank/--world-size``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import DLAInputError
from ..flux.flux2 import encode_flux2_latent
from ..flux.flux2_weights import FLUX2_VAE_CLASS, is_flux2_vae_folder, load_flux2_vae
from ..flux.weights import load_flux_vae
from ..mllm import encode_joint, load_mllm
from .buckets import manifest_buckets
from .config import DLATrainingConfig, require_paths
from .data import CACHE_INDEX, ManifestRecord, read_manifest, shard_name, store_hidden_states, write_json_atomic

CACHE_VERSION = 1


def num_shards(num_samples: int, shard_size: int) -> int:
    return (num_samples + shard_size - 1) // shard_size


def cache_fingerprint(config: DLATrainingConfig) -> str:
    """Hash of everything that changes the cached values (manifest, models' configs, preprocessing)."""
    d = config.data
    parts = {
        "version": CACHE_VERSION,
        "manifest": hashlib.sha256(Path(d.manifest).read_bytes()).hexdigest(),
        "mllm": _folder_identity(config.model.mllm),
        "vae": _folder_identity(config.model.vae),
        "resolution": d.resolution,
        "reference_size": d.reference_size,
        "shard_size": d.shard_size,
        "mllm_image_size": d.mllm_image_size,
        "mllm_layers": d.mllm_layers,
        "cache_dtype": d.cache_dtype,
    }
    if d.aspect_buckets:  # a square-crop cache from before buckets keeps its fingerprint
        parts["buckets"] = [d.max_aspect, d.max_crop]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _folder_identity(path: str | None) -> str:
    # A model is identified by its config and weight file sizes (hashing 16 GB of weights is too slow).
    if path is None:
        return ""
    path = Path(path)
    if path.is_file():
        return f"{path.name}:{path.stat().st_size}"
    items = []
    for file in sorted(path.rglob("*")):
        if file.is_file():
            items.append(f"{file.relative_to(path)}:{file.stat().st_size}")
            if file.suffix == ".json" and file.stat().st_size < 1_000_000:
                items.append(hashlib.sha256(file.read_bytes()).hexdigest()[:12])
    return hashlib.sha256("|".join(items).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- image preprocessing


def _round16(value: float) -> int:
    return max(16, int(round(value / 16)) * 16)


def target_pixels(path: str, size: tuple[int, int]) -> torch.Tensor:
    """Scale to cover the bucket ``size`` = (width, height), centre-crop to it -> [3, height, width] in [-1, 1]."""
    width, height = size
    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = max(width / image.width, height / image.height)
        crop_w, crop_h = width / scale, height / scale  # the region of the source that fills the bucket
        left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
        image = image.resize((width, height), Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
        return _to_tensor(image)


def reference_pixels(path: str, reference_size: int) -> torch.Tensor:
    """Resize so the longer side is ``reference_size`` (sides multiples of 16) -> [3, h, w] in [-1, 1]."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = reference_size / max(image.size)
        size = (_round16(image.width * scale), _round16(image.height * scale))
        return _to_tensor(image.resize(size, Image.Resampling.BICUBIC))


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # [h, w, 3]
    return array.permute(2, 0, 1).float() / 127.5 - 1.0


def load_training_vae(config: DLATrainingConfig, device) -> torch.nn.Module:
    """The frozen VAE of ``model.vae`` (FLUX.1's AutoencoderKL or FLUX.2's) on ``device``, eval, no gradients."""
    load_vae = load_flux2_vae if is_flux2_vae_folder(config.model.vae) else load_flux_vae
    vae = load_vae(config.model.vae, dtype=getattr(torch, config.model.vae_dtype)).to(device).eval()
    vae.requires_grad_(False)
    return vae


@torch.no_grad()
def encode_latent(vae, pixels: torch.Tensor) -> torch.Tensor:
    """[3, h, w] in [-1, 1] -> model-space latent [C, h/8, w/8] (float32, on CPU).

    FLUX.2's VAE (``AutoencoderKLFlux2``): [128, h/16, w/16] (:func:`dla_core.flux.flux2.encode_flux2_latent`).
    """
    if type(vae).__name__ == FLUX2_VAE_CLASS:
        return encode_flux2_latent(vae, pixels)
    param = next(vae.parameters())
    posterior = vae.encode(pixels[None].to(param.device, param.dtype)).latent_dist
    latent = posterior.mean.float()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((latent - shift) * vae.config.scaling_factor)[0].cpu()


# ----------------------------------------------------------------------------- sharding


@dataclass
class PrepareReport:
    """What one ``prepare`` process did."""

    rank: int
    world_size: int
    shards_total: int
    shards_written: list[int]
    shards_skipped: list[int]
    seconds: float


def _shard_fingerprint(path: Path) -> str | None:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("fingerprint")
    except Exception:  # noqa: BLE001 - a corrupt shard is simply redone
        return None


def encode_record(
    record: ManifestRecord, bucket: tuple[int, int], mllm, vae, config: DLATrainingConfig
) -> tuple[dict, dict]:
    """One manifest record -> (tensors, feature metadata): what prepare caches and online training computes.

    Tensors: ``hidden_states`` [layers, tokens, width] in the MLLM's dtype on its device (prepare casts it to the
    storage dtype), ``image_mask`` / ``text_mask`` [tokens] bool, ``target`` [16, H/8, W/8] at ``bucket``,
    ``reference.{k}`` [16, h/8, w/8] (float32, CPU).
    """
    d = config.data
    references = []
    for ref in record.references:
        with Image.open(ref) as image:
            references.append(image.convert("RGB"))
    features = encode_joint(mllm, [record.prompt], [references], image_size=d.mllm_image_size, layers=d.mllm_layers)
    valid = int(features.attention_mask[0].sum())
    # Right-padded: the first `valid` positions are the sample's tokens.
    tensors = {
        "hidden_states": features.hidden_states[0, :, :valid],  # [layers, tokens, width]
        "image_mask": features.image_mask[0, :valid].bool().cpu().contiguous(),
        "text_mask": features.text_mask[0, :valid].bool().cpu().contiguous(),
        "target": encode_latent(vae, target_pixels(record.target, bucket)),
    }
    for k, ref in enumerate(record.references):
        tensors[f"reference.{k}"] = encode_latent(vae, reference_pixels(ref, d.reference_size))
    feature_meta = {
        "family": features.family,
        "num_layers": features.num_layers,
        "width": features.width,
        "layer_indices": list(features.layer_indices),
        "model_name": features.model_name,
    }
    return tensors, feature_meta


def _write_index(
    cache_dir: Path,
    fingerprint: str,
    records: list[ManifestRecord],
    buckets: list[tuple[int, int]],
    config: DLATrainingConfig,
) -> None:
    index = {
        "version": CACHE_VERSION,
        "fingerprint": fingerprint,
        "num_samples": len(records),
        "shard_size": config.data.shard_size,
        "num_shards": num_shards(len(records), config.data.shard_size),
        "resolution": config.data.resolution,
        "reference_size": config.data.reference_size,
        "buckets": [list(b) for b in buckets],  # target (width, height) per sample
    }
    write_json_atomic(cache_dir / CACHE_INDEX, index)  # every rank writes the same content


def check_cache_compatible(cache_dir: Path, fingerprint: str) -> None:
    """Refuse to mix a cache made with other settings into this one."""
    index_file = cache_dir / CACHE_INDEX
    if index_file.is_file():
        old = json.loads(index_file.read_text()).get("fingerprint")
        if old != fingerprint:
            raise DLAInputError(
                f"The cache in '{cache_dir}' was prepared with other settings or another manifest/model "
                f"(fingerprint {old}, now {fingerprint}). Delete that folder or set data.cache_dir to a new one."
            )


def prepare_cache(
    config: DLATrainingConfig,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    max_shards: int | None = None,
) -> PrepareReport:
    """Encode this process's share of the manifest into shards; skip the finished ones.

    ``max_shards`` stops after writing that many shards (to split long jobs, and in tests to
    simulate an interrupted run).
    """
    require_paths(config, ["data.manifest", "data.cache_dir", "model.mllm", "model.vae"], "prepare")
    records = read_manifest(config.data.manifest)  # validates every line before any model loads
    buckets = manifest_buckets(records, config.data)  # refuses targets that fit no bucket, before any model loads
    if rank is None or world_size is None:
        from accelerate import PartialState

        state = PartialState()
        rank, world_size = state.process_index, state.num_processes
    if not 0 <= rank < world_size:
        raise DLAInputError(f"--rank {rank} must be in 0..{world_size - 1} (--world-size {world_size}).")
    cache_dir = Path(config.data.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = cache_fingerprint(config)
    check_cache_compatible(cache_dir, fingerprint)
    _write_index(cache_dir, fingerprint, records, buckets, config)

    total = num_shards(len(records), config.data.shard_size)
    mine = list(range(rank, total, world_size))
    todo = [s for s in mine if _shard_fingerprint(cache_dir / shard_name(s)) != fingerprint]
    skipped = [s for s in mine if s not in todo]
    if max_shards is not None:
        todo = todo[:max_shards]
    start = time.perf_counter()
    written: list[int] = []
    if todo:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        mllm = load_mllm(config.model.mllm, dtype=getattr(torch, config.model.mllm_dtype), device=device)
        vae = load_training_vae(config, device)
        size = config.data.shard_size
        bar = tqdm(
            total=sum(min(size, len(records) - s * size) for s in todo),
            desc=f"prepare [rank {rank}]",
            disable=not progress,
            unit="sample",
        )
        for shard in todo:
            tensors: dict[str, torch.Tensor] = {}
            samples = []
            feature_meta: dict = {}
            for record in records[shard * size : (shard + 1) * size]:
                sample, feature_meta = encode_record(record, buckets[record.index], mllm, vae, config)
                sample.update(store_hidden_states(sample.pop("hidden_states"), config.data.cache_dtype))
                for key, value in sample.items():
                    tensors[f"{record.index}.{key}"] = value
                samples.append(
                    {
                        "index": record.index,
                        "id": record.id,
                        "prompt": record.prompt,
                        "num_references": len(record.references),
                    }
                )
                bar.update(1)
            metadata = {
                "fingerprint": fingerprint,
                "samples": json.dumps(samples),
                "features": json.dumps(feature_meta),
            }
            final = cache_dir / shard_name(shard)
            tmp = cache_dir / f".{shard_name(shard)}.{os.getpid()}.tmp"
            save_file(tensors, str(tmp), metadata=metadata)
            os.replace(tmp, final)
            written.append(shard)
        bar.close()
    return PrepareReport(rank, world_size, total, written, skipped, time.perf_counter() - start)
