"""Writing the tiny single-file checkpoints (the formats ComfyUI's loaders read)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def write_safetensors(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Save ``state`` to ``path`` (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path
