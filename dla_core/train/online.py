"""``data.features: online``: the frozen MLLM and VAE run inside training, no feature cache.

:class:`OnlineFeatureDataset` yields what :class:`dla_core.train.data.CachedFeatureDataset` yields, computed per
item by :func:`dla_core.train.prepare.encode_record` (the function ``prepare`` caches), so cached and online
training see the same features up to the cache's storage precision. The cost: every process holds the MLLM
(and the VAE encoder) on its GPU and runs one MLLM forward per sample per step (``validate`` counts both);
the gain: no disk (about 60 MB per sample at InternVL3-8B in bfloat16). Items are computed in the training
process (``train.num_workers: 0``), on the accelerator's device.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..mllm import load_mllm
from ..mllm.inputs import normalise_layers
from ..spec import read_mllm_spec
from .buckets import manifest_buckets
from .config import DLATrainingConfig, require_paths
from .data import CachedFeatureDataset, read_manifest
from .prepare import encode_record, load_training_vae


def feature_dataset(config: DLATrainingConfig):
    """The training data set of ``data.features``: the prepared cache, or the manifest encoded online."""
    if config.data.features == "online":
        return OnlineFeatureDataset(config)
    require_paths(config, ["data.cache_dir"], "train")
    return CachedFeatureDataset(config.data.cache_dir)


class OnlineFeatureDataset:
    """Map-style dataset over the manifest; the models load on :meth:`load` (after accelerate chose the device)."""

    def __init__(self, config: DLATrainingConfig):
        require_paths(config, ["data.manifest", "model.mllm", "model.vae"], "train (data.features: online)")
        self.config = config
        self.records = read_manifest(config.data.manifest)  # every line checked before any model loads
        self.buckets = manifest_buckets(self.records, config.data)
        spec = read_mllm_spec(config.model.mllm)
        self.spec = spec
        self.feature_meta = {  # what encode_record reports, known from the config alone
            "family": spec.family,
            "num_layers": spec.num_layers,
            "width": spec.width,
            "layer_indices": list(normalise_layers(config.data.mllm_layers, spec.num_layers)),
            "model_name": Path(config.model.mllm).name,
        }
        self.feature_source = f"the MLLM '{config.model.mllm}' (data.features: online)"
        self.mllm = self.vae = None

    def load(self, device: torch.device | str) -> None:
        """Load the frozen MLLM and VAE onto ``device`` (eval mode, no gradients)."""
        model = self.config.model
        self.mllm = load_mllm(model.mllm, dtype=getattr(torch, model.mllm_dtype), device=device)
        self.mllm.model.requires_grad_(False)
        self.vae = load_training_vae(self.config, device)

    def __len__(self) -> int:
        return len(self.records)

    @torch.no_grad()
    def __getitem__(self, index: int) -> dict:
        if self.mllm is None:
            raise RuntimeError("OnlineFeatureDataset.load(device) must run before items are read.")
        record = self.records[index]
        tensors, _ = encode_record(record, self.buckets[index], self.mllm, self.vae, self.config)
        count = len(record.references)
        return {
            "index": index,
            "prompt": record.prompt,
            "hidden_states": tensors["hidden_states"].detach(),
            "image_mask": tensors["image_mask"],
            "text_mask": tensors["text_mask"],
            "target": tensors["target"],
            "references": [tensors[f"reference.{k}"] for k in range(count)],
        }
