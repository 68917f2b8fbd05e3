"""Memory levers of training, each optional and off by default: the 8-bit optimizer and the quantized frozen base
(gradient checkpointing is ``train.gradient_checkpointing``, through diffusers).

- ``train.optimizer: adamw8bit``: bitsandbytes' ``AdamW8bit`` (block-wise 8-bit moments: 2 instead of 8 bytes
  of state per parameter; at the paper's 0.96 B trainable parameters 7.2 -> 1.8 GiB). bitsandbytes is not a
  requirement of the pack; a missing package, or one without an 8-bit optimizer for the device (its CPU
  build), is refused before the model loads with what to do.
- ``model.quantize_base: int8``: the frozen DiT's linear layers in int8 weight-only form by **torchao**
  (``quantize_`` with ``Int8WeightOnlyConfig``), LoRA trained over them in higher precision. torchao is chosen
  over bitsandbytes (NF4 / LLM.int8) and optimum-quanto because it is PyTorch's own maintained quantization
  library, peft's LoRA layers support its int8 weight-only tensors, and its tensors are ``torch.Tensor``
  subclasses that FSDP2 (``fully_shard``) shards, where bitsandbytes' parameters need their own FSDP path and
  quanto is in maintenance mode. It halves the frozen weights (FLUX.1-dev 22 -> 11 GiB). Not yet run on GPUs.

:func:`optimizer_state_bytes` (:mod:`.estimate`) is the one byte rule; the trainer reports it at start.
"""

from __future__ import annotations

import importlib
import logging

import torch
from torch import nn

from ..errors import DLAInputError
from .estimate import optimizer_state_bytes

logger = logging.getLogger(__name__)


def _import(module: str, lever: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DLAInputError(
            f"{lever} needs the Python package '{package}', which is not installed (it is optional: the pack does not "
            f"require it). Install it with `pip install {package}`, or turn the lever off in the config."
        ) from exc


def check_levers(config, device: torch.device | str) -> None:
    """Refuse a lever whose library is missing or has no backend for ``device``, before any model loads."""
    device = torch.device(device)
    if config.train.optimizer == "adamw8bit":
        bnb = _import("bitsandbytes", "train.optimizer: adamw8bit", "bitsandbytes")
        probe = nn.Parameter(torch.zeros(4096, device=device))  # bitsandbytes' smallest 8-bit tensor
        probe.grad = torch.ones_like(probe)
        try:
            bnb.optim.AdamW8bit([probe], lr=1e-3).step()
        except Exception as exc:  # noqa: BLE001 - each backend fails its own way (RuntimeError, NotImplementedError)
            raise DLAInputError(
                f"bitsandbytes {getattr(bnb, '__version__', '')} has no 8-bit AdamW for device '{device}' ({exc}). "
                "Train on a CUDA GPU with a bitsandbytes built for it, or set train.optimizer: adamw."
            ) from exc
    if config.model.quantize_base == "int8":
        _int8_config()


def _int8_config():
    quantization = _import("torchao.quantization", "model.quantize_base: int8", "torchao")
    if hasattr(quantization, "Int8WeightOnlyConfig"):
        return quantization.Int8WeightOnlyConfig()
    return quantization.int8_weight_only()  # torchao < 0.10


def quantize_base(transformer: nn.Module, mode: str) -> None:
    """Quantize the frozen transformer's linear layers in place (before the LoRA is added); ``none`` does nothing."""
    if mode == "none":
        return
    from torchao.quantization import quantize_

    quantize_(transformer, _int8_config())


def make_optimizer(param_groups: list[dict], t) -> torch.optim.Optimizer:
    """AdamW or bitsandbytes' AdamW8bit over ``param_groups`` with the config's betas, epsilon and weight decay."""
    options = dict(betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon, weight_decay=t.weight_decay)
    if t.optimizer == "adamw8bit":
        bnb = _import("bitsandbytes", "train.optimizer: adamw8bit", "bitsandbytes")
        return bnb.optim.AdamW8bit(param_groups, **options)
    return torch.optim.AdamW(param_groups, **options)


def describe_trainable(lora: list[torch.Tensor], dla: list[torch.Tensor], optimizer: str) -> tuple[int, int, str]:
    """(trainable parameters, optimizer-state bytes, the line the trainer logs at start)."""
    numels = [p.numel() for p in lora + dla]
    total, state = sum(numels), optimizer_state_bytes(numels, optimizer)
    line = (
        f"trainable: {total:,} parameters (LoRA {sum(p.numel() for p in lora):,} + DLA "
        f"{sum(p.numel() for p in dla):,}); optimizer {optimizer} state {state:,} bytes ({state / 1024**3:.2f} GiB)"
    )
    return total, state, line
