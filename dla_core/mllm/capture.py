"""Hidden-state capture: one backbone forward, every requested layer copied out by hooks as it runs.

Only the backbone runs (vision tower, projector, language model; never the LM head), with
``use_cache=False``; forward hooks copy each layer's state into one preallocated
``[batch, layers, tokens, width]`` tensor while the forward runs, in the model's dtype.

Layer convention (identical to transformers' ``output_hidden_states=True`` tuple of the
multimodal backbone, ``model.model``): layer 0 is the input of the first decoder layer
(token embeddings with the image features merged in), layer k (1 <= k < N) the input of
decoder layer k (= the output of decoder layer k-1, plus Qwen3-VL's deepstack visual features
where the model adds them), layer N (the last) the output of the final norm. For InternVL
and Qwen2.5-VL this also equals ``model(...)``'s tuple; Qwen3-VL's
``Qwen3VLForConditionalGeneration`` in transformers 4.57 returns the last decoder output
*before* the final norm as its last entry, unlike its own backbone: we follow the backbone,
so the last layer is always post-norm for every family. transformers 5 records Qwen3-VL's
deepstack layers before the deepstack addition (4.x added it in place into the recorded
tensor); the capture here is the same on both: what decoder layer k reads.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .loading import LoadedMLLM


class _StopForward(Exception):
    """Raised by a capture hook once the highest requested layer is stored."""


def _backbone_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList, nn.Module]:
    """(multimodal backbone without LM head, decoder layers, final norm)."""
    backbone = model.model
    language_model = backbone.language_model
    return backbone, language_model.layers, language_model.norm


Progress = Callable[[int, int], None]  # (steps done, steps in all); may raise to stop the work (an interrupt)


def forward_steps(mllm: LoadedMLLM, layer_indices: tuple[int, ...]) -> int:
    """Progress steps :func:`capture_forward` reports: one per decoder layer it runs (+1 for the final norm)."""
    num_decoders = mllm.spec.num_layers - 1
    last_needed = max(layer_indices)
    return min(last_needed, num_decoders - 1) + 1 + (1 if last_needed == num_decoders else 0)


def capture_forward(
    mllm: LoadedMLLM,
    inputs: dict,
    layer_indices: tuple[int, ...],
    progress: Progress | None = None,
    done_before: int = 0,
    total: int | None = None,
) -> torch.Tensor:
    """Run the backbone once; return the requested layers. [batch, kept layers, tokens, width].

    ``progress(done, total)`` is called as each decoder layer starts (and after the final norm), with
    ``done`` counted from ``done_before``; an exception it raises (ComfyUI's interrupt) stops the forward
    there and propagates.
    """
    backbone, decoder_layers, final_norm = _backbone_parts(mllm.model)
    num_decoders = len(decoder_layers)
    input_ids = inputs["input_ids"]
    device = input_ids.device
    dtype = backbone.get_input_embeddings().weight.dtype
    batch, tokens = input_ids.shape
    captured = torch.empty(batch, len(layer_indices), tokens, mllm.spec.width, dtype=dtype, device=device)
    slots = {layer: slot for slot, layer in enumerate(layer_indices)}
    last_needed = max(layer_indices)
    steps_total = total if total is not None else done_before + forward_steps(mllm, layer_indices)
    step = [done_before]

    def report() -> None:
        step[0] += 1
        if progress is not None:
            progress(step[0], steps_total)

    def store(layer: int, hidden: torch.Tensor) -> None:
        if layer in slots:
            captured[:, slots[layer]].copy_(hidden)
        if layer == last_needed and last_needed < num_decoders:
            raise _StopForward

    def make_input_hook(layer: int):
        def hook(module, args, kwargs):
            report()
            store(layer, args[0] if args else kwargs["hidden_states"])

        return hook

    def final_norm_hook(module, args, output):
        report()
        store(num_decoders, output)

    # Layer k < N is the input of decoder layer k: the previous decoder's output plus whatever
    # the model adds between layers (Qwen3-VL's deepstack features), as transformers records it.
    handles = [
        decoder_layers[layer].register_forward_pre_hook(make_input_hook(layer), with_kwargs=True)
        for layer in range(min(last_needed, num_decoders - 1) + 1)
    ]
    if last_needed == num_decoders:
        handles.append(final_norm.register_forward_hook(final_norm_hook))
    try:
        with torch.inference_mode():
            mllm.forward_calls += 1
            backbone(**inputs, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured
