"""Krea 2: everything the pack knows about this model family, in one place (no ComfyUI import).

Krea 2 (open weights, June 2026; ComfyUI 0.33: ``comfy/ldm/krea2``, ``comfy/text_encoders/krea2.py``,
``CLIPLoader`` type ``krea2``) is a 12.9B single-stream DiT conditioned on 12 hidden states of
Qwen3-VL-4B per token, ``hidden_states[2, 5, ..., 35]`` (hidden state k = the input of decoder
layer k; 0 = the token embeddings), flattened to ``[tokens, 12 * 2560]`` in the conditioning.
Inside the DiT a *text fusion* stage turns the 12 states into one vector per token:

1. two transformer blocks whose sequence axis is the layer axis (per token, never across tokens),
2. a learned ``12 -> 1`` linear projection over the layer axis,
3. two refiner blocks across tokens.

Steps 1-2 are the paper's Layerwise Attention Pooling (LAP), shipped in a model people run.
:func:`fusion_layer_shares` reads, for each token, how much of the fused vector comes from each
tapped layer with the same rollout the pack's Layer Map uses for a DLA's LAP
(:meth:`dla_core.lap.LayerwiseAttentionPooling.layer_attention`).

Reference latents: Krea 2 reads ComfyUI's ``reference_latents`` with method ``index`` (its default)
or ``index_timestep_zero``; the latent format is Wan 2.1's (16 channels, 8x downsampling).
"""

from __future__ import annotations

import torch

from .lap import layer_mixing, rollout_shares

FAMILY = "qwen3_vl"  # MLLMFeatures.family of Qwen3-VL, from ComfyUI's encoder or Hugging Face's
TEXT_ENCODER_NAME = "Qwen3-VL-4B (Krea 2 text encoder)"
WIDTH = 2560  # Qwen3-VL-4B's hidden size
NUM_STATES = 37  # token embeddings + 36 decoder layers (the last state: after the final norm)
TAP_LAYERS = (2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35)  # ComfyUI's KREA2_TAP_LAYERS
CONTEXT_WIDTH = len(TAP_LAYERS) * WIDTH  # 30720: what the DiT unpacks into [12, 2560] per token
TARGET = "krea2"
TARGET_DESCRIPTION = (
    "Krea 2 (Qwen3-VL-4B hidden states 2, 5, ..., 35 per token: 12 x 2560, fused by the DiT's own text fusion; no "
    "pooled vector)"
)
REFERENCE_METHODS = ("index", "index_timestep_zero")  # what Krea 2's DiT reads; "index" is its default
# The ComfyUI the pack tests Krea 2 on (its first release with Krea 2 is not known here).
TESTED_COMFYUI = "0.33.0"
REFERENCE_INPUTS = 6  # IMAGE inputs of the joint-encode node (each may be a batch; DLA_MAX_REFERENCES limits the total)


def stack_taps(hidden_states: torch.Tensor, layer_indices=None) -> torch.Tensor:
    """``[batch, states, tokens, width]`` -> Krea 2's conditioning ``[batch, tokens, 12 * width]``.

    ``layer_indices``: the hidden-state number of each entry of the states axis (default: 0, 1, ...).
    Per token the layout is ``[state 2 | state 5 | ... | state 35]``, as ComfyUI's encoder flattens it.
    """
    held = list(range(hidden_states.shape[1])) if layer_indices is None else list(layer_indices)
    positions = [held.index(layer) for layer in TAP_LAYERS]
    stacked = hidden_states[:, positions]  # [batch, 12, tokens, width]
    return stacked.permute(0, 2, 1, 3).reshape(stacked.shape[0], stacked.shape[2], -1)


def attention_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Softmax attention averaged over heads, ``[items, layers, layers]``, from ``q`` / ``k`` ``[items, heads, L, d]``.

    ``k`` may have fewer (grouped) heads than ``q``; each is shared by ``heads // kv_heads`` query heads.
    """
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = q.float() @ k.float().transpose(-1, -2) / q.shape[-1] ** 0.5  # [items, heads, L, L]
    return scores.softmax(dim=-1).mean(dim=1)


def block_mixing(block_input: torch.Tensor, branch: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """How one layerwise block mixes the layers: ``[items, L, L]`` rows summing to 1 (as for a LAP block).

    ``block_input``: the residual stream entering the block ``[items, L, width]``; ``branch``: the attention
    branch's output added to it; ``probs``: its attention averaged over heads (:func:`attention_probs`).
    """
    return layer_mixing(block_input.float(), branch.float(), probs.float())


def fusion_layer_shares(mixings: list[torch.Tensor], terms: torch.Tensor) -> torch.Tensor:
    """Each token's share of the fused vector per tapped layer, ``[items, 12]``, rows summing to 1.

    ``mixings``: :func:`block_mixing` of each layerwise block, in order. ``terms``: the ``12 -> 1``
    projection's term per layer slot, ``[items, 12, width]`` (``w_l * z_l``; their sum is the fused
    vector). Slot l's read-out is ``|w_l z_l|`` over the sum of those norms, rolled back through the
    blocks to the input layers: the pack's LAP rollout.
    """
    items, layers = terms.shape[:2]
    rollout = torch.eye(layers, dtype=torch.float32, device=terms.device).expand(items, -1, -1)
    for mixing in mixings:
        rollout = mixing @ rollout  # [items, L, L]: final position <- input layer
    return rollout_shares(terms.float().norm(dim=-1), rollout)
