"""TEST worker: one training step of the tiny DLA + LoRA'd FLUX module, sharded with FSDP2 (``fully_shard`` on
the block classes an accelerate FSDP2 config names, then on the whole module) when started by torchrun on CPU
processes (gloo), unsharded when started alone. Rank 0 writes the loss, the number of blocks sharded per class and
the trainable weights gathered by ``dla_core.train.module.trainable_state_dict``.

    python -m dla_train_fsdp_worker TRAINING_YAML ACCELERATE_YAML OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import yaml


def main(config_path: str, accelerate_path: str, out_dir: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    from dla_core.train.config import load_config
    from dla_core.train.data import CachedFeatureDataset, collate_samples
    from dla_core.train.module import KEEP_BOTH, build_module, trainable_state_dict

    torch.set_num_threads(1)
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    config = load_config(config_path)
    dataset = CachedFeatureDataset(config.data.cache_dir)
    torch.manual_seed(0)  # the LoRA's A matrices
    module = build_module(config, dataset.feature_meta)
    classes = yaml.safe_load(Path(accelerate_path).read_text())["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]
    sharded = {name: 0 for name in classes.split(",")}
    if distributed:
        from torch.distributed.fsdp import fully_shard

        blocks = [(type(sub).__name__, sub) for sub in module.modules() if type(sub).__name__ in sharded]
        for name, block in blocks:  # fully_shard renames the class (FSDP<name>): names are read first
            fully_shard(block)
            sharded[name] += 1
        fully_shard(module)
    batch = collate_samples([dataset[0], dataset[1]])  # same bucket, one reference each of the same shape
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(batch["target"].shape, generator=generator)
    sigmas = torch.rand(2, generator=generator)
    events = torch.full((2,), KEEP_BOTH, dtype=torch.long)
    loss = module(batch, noise, sigmas, events, 2)  # stage 2: text, image and reference tokens
    loss.backward()  # FSDP2 averages the gradients over the processes: the same batch on each = one process's
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1.0)  # the step = the gradient
    optimizer.step()
    state = trainable_state_dict(module)  # every process: gathers the shards
    if not distributed or dist.get_rank() == 0:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out / "trainable.safetensors"))
        world = dist.get_world_size() if distributed else 1
        (out / "result.json").write_text(json.dumps({"loss": float(loss.detach()), "sharded": sharded, "world": world}))
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
