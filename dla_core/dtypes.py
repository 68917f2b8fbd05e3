"""The pack's one table of weight precisions: short names (CLI, nodes, configs) and torch names (config.json)."""

from __future__ import annotations

import torch

# Short name -> dtype, in the order messages list them.
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# ``torch_dtype`` / ``dtype`` as Hugging Face config.json files and ``data.cache_dtype`` spell them.
TORCH_DTYPE_NAMES = {str(dtype).removeprefix("torch."): dtype for dtype in DTYPES.values()}
