"""The contract between the MLLM encoder and the DLA: :class:`MLLMFeatures`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MLLMFeatures:
    """Per-layer hidden states of one joint (instruction + reference images) MLLM pass.

    ``hidden_states``: [batch, layers, tokens, width]; layer 0 is the embedding output,
    layer k the output of decoder layer k. Right-padded along tokens.
    ``image_mask`` / ``text_mask`` / ``attention_mask``: [batch, tokens] booleans. The two
    content masks are disjoint and both lie inside ``attention_mask``; chat-template tokens
    (role markers, image delimiters) are in neither.
    """

    hidden_states: torch.Tensor  # [batch, layers, tokens, width]
    image_mask: torch.Tensor  # [batch, tokens] bool
    text_mask: torch.Tensor  # [batch, tokens] bool
    attention_mask: torch.Tensor  # [batch, tokens] bool
    family: str
    num_layers: int  # layers of the MLLM (embedding + decoders), even if a subset is kept
    width: int
    layer_indices: tuple[int, ...]  # which layers hidden_states holds, in order
    prompts: tuple[str, ...] = ()
    model_name: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.hidden_states.shape[0]

    def to(self, device=None, dtype=None) -> "MLLMFeatures":
        """Copy with hidden states moved/cast; masks only move."""
        return MLLMFeatures(
            hidden_states=self.hidden_states.to(device=device, dtype=dtype),
            image_mask=self.image_mask.to(device=device),
            text_mask=self.text_mask.to(device=device),
            attention_mask=self.attention_mask.to(device=device),
            family=self.family,
            num_layers=self.num_layers,
            width=self.width,
            layer_indices=self.layer_indices,
            prompts=self.prompts,
            model_name=self.model_name,
            extra=dict(self.extra),
        )
