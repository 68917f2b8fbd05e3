"""Layerwise Attention Pooling (LAP), from UniFusion (arXiv 2510.12789) as used by the paper.

For every token separately, its hidden states over the MLLM's layers form a short sequence
(length = layers). Two small pre-norm transformer blocks attend across that layer axis,
never across tokens, and a fully connected map turns the result into one vector per token.
Tokens are folded into the batch axis, so no operation can mix two tokens: permuting tokens
permutes outputs exactly and a padded token cannot influence any other.

Design choices the paper leaves open (documented, configurable):

* ``input_width -> lap_width`` input projection (absent when equal). The paper-scale default
  ``lap_width=1024`` keeps the blocks small next to InternVL3-8B's 3584-wide states.
* ``input_norm``: a LayerNorm (shared over layers, no affine) on each layer's state before
  the projection. Middle LLM layers carry a few huge activations; normalising them keeps a
  randomly initialised LAP well conditioned. Off for the identity initialisation, which must
  pass the selected layer through unchanged.
* A learned layer position embedding (the blocks are otherwise permutation-invariant
  over layers and could not tell layer 3 from layer 27).
* ``pool="flatten"`` (default): the literal fully connected layer over the flattened
  ``layers * lap_width`` result -> ``out_width``. Every layer gets its own linear map.
  Parameters: ``layers * lap_width * out_width`` (29 * 1024 * 1024 = 30 M at paper scale;
  29 * 3584 * 3584 = 372 M if ``lap_width`` is raised to the MLLM's width).
* ``pool="weighted"``: the same fully connected map with a factorised weight, learned per-layer
  scalars times one shared ``lap_width -> out_width`` linear: ``layers + lap_width * out_width``
  parameters. Use it when ``lap_width`` must be large (identity initialisation at 8B widths).
* ``pool="stack"``: no pooling map: the blocks' output per layer, side by side
  (``out_width = layers * lap_width``). For a DiT that fuses the layers itself (Krea 2 reads 12
  Qwen3-VL states per token and pools them with its own layerwise blocks): the DLA hands it one
  slot per layer, and the blocks still let every slot draw on the others.

The pools can express "take layer k unchanged" exactly, which the identity initialisation
uses (:meth:`LayerwiseAttentionPooling.init_identity`); ``stack`` passes every layer through.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DLAInputError

POOL_MODES = ("flatten", "weighted", "stack")


class LayerAttentionBlock(nn.Module):
    """Pre-norm transformer block whose sequence axis is the MLLM's layer axis."""

    def __init__(self, width: int, heads: int, mlp_hidden: int):
        super().__init__()
        if width % heads != 0:
            raise DLAInputError(
                f"LAP width {width} is not divisible by {heads} attention heads; choose heads that divide it."
            )
        self.heads = heads
        self.attn_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_out = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp_in = nn.Linear(width, mlp_hidden)
        self.mlp_out = nn.Linear(mlp_hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [items, layers, width]; items are (sample, token) pairs, never attended across.
        items, layers, width = x.shape
        qkv = self.qkv(self.attn_norm(x))  # [items, layers, 3 * width]
        qkv = qkv.view(items, layers, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [items, heads, layers, head_dim]
        attended = attended.transpose(1, 2).reshape(items, layers, width)
        x = x + self.attn_out(attended)
        return x + self.mlp_out(F.gelu(self.mlp_in(self.mlp_norm(x))))

    def forward_with_mixing(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` with the attention written out; also returns how each layer draws on the others.

        Returns ``(output, mixing)``. ``output`` equals :meth:`forward`'s up to float rounding (the
        attention is computed explicitly here, by fused kernels there). ``mixing`` ``[items, layers,
        layers]``: row ``i`` is how position ``i``'s state after the block is made of the positions before
        it: ``(|x_i| * e_i + |a_i| * A_i) / (|x_i| + |a_i|)``, with ``x_i`` the residual, ``a_i`` the
        attention branch's output and ``A`` the attention averaged over heads. Rows sum to 1. The MLP
        acts on each position alone, so it does not mix layers. A block whose attention output is
        zeroed (the identity initialisation) mixes nothing: ``mixing`` is the identity.
        """
        items, layers, width = x.shape
        head_dim = width // self.heads
        qkv = self.qkv(self.attn_norm(x))  # [items, layers, 3 * width]
        qkv = qkv.view(items, layers, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        scores = qkv[0] @ qkv[1].transpose(-1, -2) / head_dim**0.5  # [items, heads, layers, layers]
        probs = scores.softmax(dim=-1)
        attended = (probs @ qkv[2]).transpose(1, 2).reshape(items, layers, width)
        branch = self.attn_out(attended)  # [items, layers, width]
        mixing = layer_mixing(x, branch, probs.mean(dim=1))  # [items, layers, layers]
        x = x + branch
        return x + self.mlp_out(F.gelu(self.mlp_in(self.mlp_norm(x)))), mixing

    def zero_residual_branches(self) -> None:
        """Make the block the identity map: both residual branches output exactly 0."""
        for linear in (self.attn_out, self.mlp_out):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)


class LayerwiseAttentionPooling(nn.Module):
    """Per-token attention over the layer axis, pooled to one vector per token.

    Input ``[batch, layers, tokens, input_width]`` -> output ``[batch, tokens, out_width]``,
    or ``[items, layers, input_width]`` -> ``[items, out_width]`` (tokens already gathered).
    """

    def __init__(
        self,
        num_layers: int,
        input_width: int,
        lap_width: int,
        out_width: int,
        heads: int = 16,
        blocks: int = 2,
        mlp_hidden: int = 4096,
        pool: str = "flatten",
        input_norm: bool = True,
    ):
        super().__init__()
        if pool not in POOL_MODES:
            raise DLAInputError(f"Unknown LAP pool '{pool}'; choose one of {', '.join(POOL_MODES)}.")
        if num_layers < 1:
            raise DLAInputError(f"LAP needs at least one layer, got {num_layers}.")
        self.num_layers = num_layers
        self.input_width = input_width
        self.lap_width = lap_width
        self.out_width = out_width
        self.pool = pool
        self.input_norm = nn.LayerNorm(input_width, elementwise_affine=False) if input_norm else None
        self.input_proj = nn.Linear(input_width, lap_width) if input_width != lap_width else None
        self.layer_embedding = nn.Parameter(torch.zeros(num_layers, lap_width))  # [layers, lap_width]
        self.blocks = nn.ModuleList(LayerAttentionBlock(lap_width, heads, mlp_hidden) for _ in range(blocks))
        if pool == "flatten":
            self.pool_fc = nn.Linear(num_layers * lap_width, out_width)
            self.layer_weights = None
        elif pool == "stack":
            if out_width != num_layers * lap_width:
                raise DLAInputError(
                    f"LAP pool 'stack' outputs every layer side by side: {num_layers} x {lap_width} = "
                    f"{num_layers * lap_width} wide, but the output width is {out_width}."
                )
            self.pool_fc = None
            self.layer_weights = None
        else:
            self.pool_fc = nn.Linear(lap_width, out_width)
            self.layer_weights = nn.Parameter(torch.full((num_layers,), 1.0 / num_layers))  # [layers]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random initialisation (transformer-style small normal weights, zero biases)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.layer_embedding, std=0.02)
        if self.layer_weights is not None:
            nn.init.constant_(self.layer_weights, 1.0 / self.num_layers)

    @torch.no_grad()
    def init_identity(self, layer: int) -> None:
        """Make the LAP return the input's layer ``layer`` (index into its layer axis) exactly.

        Needs ``input_width == lap_width == out_width`` and no input norm. Blocks keep their
        random attention/MLP input weights but zeroed residual branches, so training starts
        from "that layer" and gradients still reach every weight.
        """
        self.init_identity_stack([layer])

    @torch.no_grad()
    def init_identity_stack(self, layers: list[int]) -> None:
        """Make the LAP return the input's layers ``layers`` side by side: ``[layer a | layer b | ...]``.

        One layer is :meth:`init_identity`. Several (FLUX.2's text encoders stack three) need
        ``pool="flatten"`` and ``out_width == len(layers) * lap_width``; as for one layer,
        ``input_width == lap_width`` and no input norm. The result is exact: every output value
        is one input value times 1 plus zeros.
        """
        if self.input_width != self.lap_width or self.input_norm is not None:
            raise DLAInputError(
                "Identity initialisation needs lap_width equal to the MLLM width and input_norm off "
                f"(got input {self.input_width}, lap {self.lap_width}, out {self.out_width}, "
                f"input_norm {'on' if self.input_norm is not None else 'off'})."
            )
        if not layers or self.out_width != len(layers) * self.lap_width:
            raise DLAInputError(
                f"Identity initialisation of {len(layers)} layer(s) of width {self.lap_width} needs a LAP output "
                f"{len(layers) * self.lap_width} wide, got {self.out_width}."
            )
        if len(layers) > 1 and self.pool == "weighted":
            raise DLAInputError("Stacking several layers needs pool 'flatten' or 'stack'; 'weighted' sums them.")
        for layer in layers:
            if not -self.num_layers <= layer < self.num_layers:
                raise DLAInputError(f"Identity layer {layer} is out of range for {self.num_layers} layers.")
        positions = [layer % self.num_layers for layer in layers]
        if self.pool == "stack" and positions != list(range(self.num_layers)):
            raise DLAInputError(
                f"Pool 'stack' outputs all {self.num_layers} layers in their order; identity layers {layers} differ."
            )
        self.layer_embedding.zero_()
        for block in self.blocks:
            block.zero_residual_branches()
        if self.pool == "stack":
            return
        width = self.lap_width
        eye = torch.eye(width, dtype=self.pool_fc.weight.dtype, device=self.pool_fc.weight.device)
        self.pool_fc.weight.zero_()
        self.pool_fc.bias.zero_()
        if self.pool == "flatten":
            # pool_fc sees [layer 0 | layer 1 | ...]; output slot j copies layer positions[j]'s slot.
            for slot, layer in enumerate(positions):
                self.pool_fc.weight[slot * width : (slot + 1) * width, layer * width : (layer + 1) * width] = eye
        else:
            self.layer_weights.zero_()
            self.layer_weights[positions[0]] = 1.0
            self.pool_fc.weight.copy_(eye)

    def forward(self, hidden_states: torch.Tensor, check_interrupt: Callable[[], None] | None = None) -> torch.Tensor:
        """``check_interrupt``: optional, called before each block and before the pooling map; whatever it raises
        stops the forward there (the nodes pass ComfyUI's interrupt check; ``dla_core`` never imports ComfyUI)."""
        if hidden_states.dim() == 4:
            batch, layers, tokens, width = hidden_states.shape
            items = hidden_states.permute(0, 2, 1, 3).reshape(batch * tokens, layers, width)
            return self._forward_items(items, check_interrupt).view(batch, tokens, self.out_width)
        if hidden_states.dim() == 3:
            return self._forward_items(hidden_states, check_interrupt)
        raise DLAInputError(
            "LAP expects hidden states [batch, layers, tokens, width] or [items, layers, width], got shape "
            f"{tuple(hidden_states.shape)}."
        )

    def _check_items(self, items: torch.Tensor) -> None:
        # items: [items, layers, input_width]
        if items.dim() != 3:
            raise DLAInputError(f"LAP expects gathered hidden states [items, layers, width], got {tuple(items.shape)}.")
        if items.shape[1] != self.num_layers or items.shape[2] != self.input_width:
            raise DLAInputError(
                f"LAP was built for {self.num_layers} layers of width {self.input_width}, "
                f"got {items.shape[1]} layers of width {items.shape[2]}."
            )

    def _embed(self, items: torch.Tensor) -> torch.Tensor:
        x = items
        if self.input_norm is not None:
            x = self.input_norm(x)
        if self.input_proj is not None:
            x = self.input_proj(x)  # [items, layers, lap_width]
        return x + self.layer_embedding

    def readout_weights(self) -> torch.Tensor:
        """Share of each layer slot in the pooling map's weights, ``[layers]``, summing to 1 (no input needed).

        ``flatten``: the Frobenius norm of each layer's block of the fully connected map; ``weighted``:
        ``|layer weight|`` (the shared map is the same for every layer). What a checkpoint alone says
        about the layers it reads; :meth:`layer_attention` adds the blocks' attention for real inputs.
        """
        with torch.no_grad():
            if self.pool == "flatten":
                weight = self.pool_fc.weight.view(self.out_width, self.num_layers, self.lap_width)
                per_layer = weight.float().pow(2).sum(dim=(0, 2)).sqrt()  # [layers]
            elif self.pool == "stack":
                per_layer = torch.ones(self.num_layers)  # every layer has its own slot, unweighted
            else:
                per_layer = self.layer_weights.float().abs()
            return _normalise(per_layer, dim=0)

    def layer_attention(
        self, items: torch.Tensor, check_interrupt: Callable[[], None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """How much of each item's output comes from each input layer; ``(shares, output)``.

        ``items``: ``[items, layers, input_width]`` (tokens already gathered). ``shares``: ``[items,
        layers]``, non-negative, each row summing to 1. ``output``: the LAP output ``[items,
        out_width]``, equal to :meth:`forward`'s up to float rounding (the shares are read from that same
        pass). The attention across layers is rolled out through the blocks (each block's mixing from
        :meth:`LayerAttentionBlock.forward_with_mixing`, multiplied in order) and read out by the pooling
        map: slot ``l``'s share is the norm of its term in the pooled output (``flatten``: ``W_l z_l``;
        ``weighted``: ``w_l * W z_l``) over the sum of those norms. An identity-initialised LAP puts all
        of it on its selected layer(s). Does not change the module. ``check_interrupt``: optional, called
        before each block (as in :meth:`forward`).
        """
        self._check_items(items)
        x = self._embed(items)
        rollout = torch.eye(self.num_layers, dtype=x.dtype, device=x.device).expand(x.shape[0], -1, -1)
        for block in self.blocks:
            if check_interrupt is not None:
                check_interrupt()
            x, mixing = block.forward_with_mixing(x)
            rollout = mixing @ rollout  # [items, layers, layers]: final position <- input layer
        if self.pool == "flatten":
            weight = self.pool_fc.weight.view(self.out_width, self.num_layers, self.lap_width)
            terms = torch.einsum("olw,nlw->nlo", weight, x)  # [items, layers, out_width]
            output = terms.sum(dim=1) + self.pool_fc.bias
            readout = terms.norm(dim=-1)  # [items, layers]
        elif self.pool == "stack":
            output = x.reshape(x.shape[0], -1)  # [items, layers * lap_width]
            readout = x.norm(dim=-1)  # each slot is its own layer's state
        else:
            weights = self.layer_weights.to(x.dtype)
            output = self.pool_fc(torch.einsum("nlw,l->nw", x, weights))
            readout = F.linear(x, self.pool_fc.weight).norm(dim=-1) * weights.abs()  # [items, layers]
        return rollout_shares(readout, rollout), output

    def _forward_items(self, items: torch.Tensor, check_interrupt: Callable[[], None] | None = None) -> torch.Tensor:
        self._check_items(items)
        x = self._embed(items)
        for block in self.blocks:
            if check_interrupt is not None:
                check_interrupt()
            x = block(x)
        if check_interrupt is not None:
            check_interrupt()
        if self.pool == "flatten":
            return self.pool_fc(x.reshape(x.shape[0], -1))  # [items, out_width]
        if self.pool == "stack":
            return x.reshape(x.shape[0], -1)  # [items, layers * lap_width]
        pooled = torch.einsum("nlw,l->nw", x, self.layer_weights.to(x.dtype))  # [items, lap_width]
        return self.pool_fc(pooled)


def layer_mixing(residual: torch.Tensor, branch: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """How a block whose sequence axis is the layer axis mixes the layers, ``[items, layers, layers]``.

    Row ``i``: ``(|x_i| * e_i + |a_i| * A_i) / (|x_i| + |a_i|)`` with ``x`` the residual entering the block
    (``residual`` ``[items, layers, width]``), ``a`` the attention branch's output (``branch``, same shape)
    and ``A`` its attention averaged over heads (``probs`` ``[items, layers, layers]``). Rows sum to 1. Used
    for the pack's LAP blocks and for Krea 2's own layerwise blocks (``dla_core.krea2``).
    """
    layers = residual.shape[1]
    residual_norm = residual.norm(dim=-1, keepdim=True)  # [items, layers, 1]
    branch_norm = branch.norm(dim=-1, keepdim=True)
    eye = torch.eye(layers, dtype=probs.dtype, device=probs.device)
    mixing = residual_norm * eye + branch_norm * probs  # [items, layers, layers]
    return mixing / (residual_norm + branch_norm).clamp_min(torch.finfo(mixing.dtype).tiny)


def rollout_shares(readout: torch.Tensor, rollout: torch.Tensor) -> torch.Tensor:
    """Per item, each input layer's share: the read-out per layer slot (``[items, layers]``, any scale) made to
    sum to 1, then carried back through the blocks' rolled-out mixing (``[items, layers, layers]``)."""
    return torch.einsum("nl,nlk->nk", _normalise(readout, dim=-1), rollout)


def _normalise(values: torch.Tensor, dim: int) -> torch.Tensor:
    """``values / values.sum(dim)``; an all-zero row becomes uniform (nothing singles a layer out)."""
    total = values.sum(dim=dim, keepdim=True)
    uniform = torch.full_like(values, 1.0 / values.shape[dim])
    return torch.where(total > 0, values / total.clamp_min(torch.finfo(values.dtype).tiny), uniform)
