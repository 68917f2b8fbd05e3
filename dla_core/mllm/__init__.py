"""Joint MLLM encoding: load a local vision-language model and capture every layer's hidden states.

One chat sequence per sample holds the reference image(s) and the instruction, built by the
model's own processor and chat template; only the backbone runs and hooks copy each layer's state
out while it runs. By job:

- :mod:`.loading`: the model folder -> :class:`LoadedMLLM` (weights, processor, chat template, dtype);
- :mod:`.inputs`: prompts, references, layer selection, image sizes and the chat template, checked;
- :mod:`.capture`: one backbone forward with hooks (the layer convention is documented there);
- :mod:`.encode`: :func:`encode_joint`, the three together -> :class:`dla_core.features.MLLMFeatures`.

Imports go one way: ``encode`` -> ``inputs`` / ``capture`` -> ``loading``.
"""

from .capture import Progress, capture_forward, forward_steps
from .encode import encode_joint
from .inputs import MAX_IMAGE_SIZE
from .loading import LoadedMLLM, load_mllm, resolve_dtype

__all__ = [
    "MAX_IMAGE_SIZE",
    "LoadedMLLM",
    "Progress",
    "capture_forward",
    "encode_joint",
    "forward_steps",
    "load_mllm",
    "resolve_dtype",
]
