"""FLUX token layout: 2x2 latent packing, position ids and reference latents as extra image tokens.

The rules here reproduce what ComfyUI's FLUX does with a ``reference_latents`` conditioning
(``comfy/ldm/flux/model.py``: ``process_img`` and the reference loop of ``_forward``), so a
diffusers ``FluxTransformer2DModel`` driven by this module sees exactly the token sequence a
ComfyUI FLUX sees: ``[text ; image ; reference 1 ; reference 2 ; ...]``, text ids all zero,
and only the image part of the output is kept.

Position ids are ``(index, row, column)`` per 2x2 patch. Offsets are first worked out in
*latent pixels* (before packing) and then converted to patches with ComfyUI's rounding
``(offset + 1) // 2``. The three placement methods for the references:

- ``offset`` (ComfyUI's default, FLUX Kontext): every reference has index 1; each one is put
  below or to the right of the bounding box of the previous ones, whichever keeps the box
  more square (right when ``ref_h + h > ref_w + w``, else below).
- ``index``: reference k (from 1) has index k and starts at row 0, column 0.
- ``uxo`` (UNO / USO, "uxo/uno" in ComfyUI's node): index 0, rows and columns continue
  diagonally after the target image: reference k starts at
  ``(H + sum of earlier ref heights, W + sum of earlier ref widths)`` latent pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import DLAInputError

PATCH_SIZE = 2  # FLUX packs 2x2 latent pixels into one token
REFERENCE_METHODS = ("offset", "index", "uxo")
DEFAULT_REFERENCE_METHOD = "offset"
# FLUX.1-dev's default distilled guidance (diffusers' FluxPipeline and training script): what a call without one feeds.
FLUX_DEV_GUIDANCE = 3.5


def normalize_reference_method(method: str | None) -> str:
    """Map user spellings (``None``, ``"uxo/uno"``, ``"uso"``) to one of :data:`REFERENCE_METHODS`."""
    if method is None:
        return DEFAULT_REFERENCE_METHOD
    name = str(method).strip().lower()
    if "uxo" in name or "uno" in name or "uso" in name:
        return "uxo"
    if name not in REFERENCE_METHODS:
        raise DLAInputError(
            f"Unknown reference placement method {method!r}: use one of {', '.join(REFERENCE_METHODS)}."
        )
    return name


def _patches(length: int) -> int:
    """Latent pixels -> patches, rounding like ComfyUI (``(n + 1) // 2``)."""
    return (length + PATCH_SIZE // 2) // PATCH_SIZE


def pad_to_patch(latents: torch.Tensor) -> torch.Tensor:
    """Circularly pad odd latent heights/widths to a multiple of 2, as ComfyUI does."""
    height, width = latents.shape[-2:]
    pad_h = (PATCH_SIZE - height % PATCH_SIZE) % PATCH_SIZE
    pad_w = (PATCH_SIZE - width % PATCH_SIZE) % PATCH_SIZE
    if pad_h == 0 and pad_w == 0:
        return latents
    return F.pad(latents, (0, pad_w, 0, pad_h), mode="circular")


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[batch, channels, height, width] latents -> [batch, patches, channels*4] tokens.

    Feature order inside a token is (channel, row-in-patch, column-in-patch), the order both
    ComfyUI and diffusers use.
    """
    latents = pad_to_patch(latents)
    batch, channels, height, width = latents.shape
    tokens = latents.view(batch, channels, height // 2, 2, width // 2, 2)
    tokens = tokens.permute(0, 2, 4, 1, 3, 5)  # [batch, h/2, w/2, channels, 2, 2]
    return tokens.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`; ``height``/``width`` are the unpadded latent size."""
    batch, _, features = tokens.shape
    h_len, w_len = _patches(height), _patches(width)
    channels = features // 4
    latents = tokens.view(batch, h_len, w_len, channels, 2, 2)
    latents = latents.permute(0, 3, 1, 4, 2, 5)  # [batch, channels, h/2, 2, w/2, 2]
    latents = latents.reshape(batch, channels, h_len * 2, w_len * 2)
    return latents[:, :, :height, :width]


def image_position_ids(
    height: int,
    width: int,
    index: int = 0,
    h_offset: int = 0,
    w_offset: int = 0,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Position ids [patches, 3] of a latent of ``height`` x ``width`` latent pixels.

    ``h_offset`` / ``w_offset`` are in latent pixels and are rounded to patches like ComfyUI.
    """
    h_len, w_len = _patches(height), _patches(width)
    row0, col0 = _patches(h_offset), _patches(w_offset)
    ids = torch.zeros(h_len, w_len, 3, device=device, dtype=dtype)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(row0, row0 + h_len, device=device, dtype=dtype).unsqueeze(1)
    ids[..., 2] = torch.arange(col0, col0 + w_len, device=device, dtype=dtype).unsqueeze(0)
    return ids.reshape(h_len * w_len, 3)


def text_position_ids(num_tokens: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Text tokens all sit at position (0, 0, 0): [tokens, 3] zeros."""
    return torch.zeros(num_tokens, 3, device=device, dtype=dtype)


@dataclass(frozen=True)
class ReferencePlacement:
    """Where one reference latent goes: id index and top-left offset in latent pixels."""

    index: int
    h_offset: int
    w_offset: int


def reference_placements(
    target_hw: tuple[int, int], reference_hws: Sequence[tuple[int, int]], method: str = DEFAULT_REFERENCE_METHOD
) -> list[ReferencePlacement]:
    """Placement of each reference for a target latent of ``target_hw`` (latent pixels)."""
    method = normalize_reference_method(method)
    target_h, target_w = target_hw
    h_len, w_len = _patches(target_h), _patches(target_w)
    placements = []
    h = w = 0  # running extent (offset) / running sums (uxo), latent pixels
    index = 0
    for ref_h, ref_w in reference_hws:
        if method == "index":
            index += 1
            placements.append(ReferencePlacement(index, 0, 0))
        elif method == "uxo":
            placements.append(ReferencePlacement(0, h_len * PATCH_SIZE + h, w_len * PATCH_SIZE + w))
            h += ref_h
            w += ref_w
        else:  # offset
            h_offset = w_offset = 0
            if ref_h + h > ref_w + w:
                w_offset = w
            else:
                h_offset = h
            h = max(h, ref_h + h_offset)
            w = max(w, ref_w + w_offset)
            placements.append(ReferencePlacement(1, h_offset, w_offset))
    return placements


def _repeat_to_batch(latents: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Repeat/truncate along batch like ComfyUI's ``repeat_to_batch_size``."""
    if latents.shape[0] == batch_size:
        return latents
    if latents.shape[0] > batch_size:
        return latents[:batch_size]
    repeats = math.ceil(batch_size / latents.shape[0])
    return latents.repeat(repeats, *([1] * (latents.ndim - 1)))[:batch_size]


def reference_tokens(
    reference_latents: Sequence[torch.Tensor],
    target_hw: tuple[int, int],
    batch_size: int,
    method: str = DEFAULT_REFERENCE_METHOD,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Pack references (each [b, C, h, w], model-space) into extra image tokens and their ids.

    Returns ``(tokens [batch, ref_tokens, C*4], ids [ref_tokens, 3])``, or ``(None, None)``
    when there are no references. A reference with batch 1 is shared by the whole batch.
    """
    if not reference_latents:
        return None, None
    placements = reference_placements(target_hw, [tuple(r.shape[-2:]) for r in reference_latents], method)
    tokens, ids = [], []
    for ref, place in zip(reference_latents, placements):
        tokens.append(pack_latents(_repeat_to_batch(ref, batch_size)))
        ids.append(
            image_position_ids(
                ref.shape[-2], ref.shape[-1], place.index, place.h_offset, place.w_offset, device=ref.device
            )
        )
    return torch.cat(tokens, dim=1), torch.cat(ids, dim=0)


def flux_velocity_tokens(
    transformer,
    latents: torch.Tensor,
    sigma: torch.Tensor | float,
    context: torch.Tensor,
    pooled: torch.Tensor,
    guidance: float | torch.Tensor | None = None,
    reference_latents: Sequence[torch.Tensor] | None = None,
    reference_method: str = DEFAULT_REFERENCE_METHOD,
    text_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One FLUX velocity prediction with ComfyUI's token layout, as packed tokens: the one FLUX call of the pack.

    Inference (:func:`flux_forward`) and training (``dla_core.train.module``) both call it.
    latents: [batch, C, H, W] in model space (VAE latent after shift/scale); sigma: flow time in
    [0, 1] (scalar or [batch]); context: [batch, tokens, 4096]; pooled: [batch, 768];
    guidance: FLUX distilled guidance (ignored by a model without guidance embedding; None ->
    :data:`FLUX_DEV_GUIDANCE`). ``text_mask`` ([batch, tokens] bool, valid tokens first): padding
    shared by the whole batch is cut off and the rest is hidden from every query by a key mask,
    exactly as if it were absent. Returns the velocity of the target image's tokens
    [batch, patches, C*4] in the transformer's dtype (reference tokens dropped).
    """
    batch, _, height, width = latents.shape
    dtype = transformer.dtype
    device = latents.device
    image = pack_latents(latents)  # [batch, patches, C*4]
    image_tokens = image.shape[1]
    image_ids = image_position_ids(height, width, device=device)
    ref_tokens, ref_ids = reference_tokens(reference_latents or [], (height, width), batch, reference_method)
    if ref_tokens is not None:
        image = torch.cat([image, ref_tokens.to(device=device, dtype=image.dtype)], dim=1)
        image_ids = torch.cat([image_ids, ref_ids.to(device)], dim=0)
    attention_kwargs = None
    if text_mask is not None:
        keep = int(text_mask.sum(1).max())  # valid tokens are left-aligned: trim shared padding
        context, text_mask = context[:, :keep], text_mask[:, :keep]
        if not bool(text_mask.all()):
            # Padding keys are invisible to every query: exactly as if the padding were absent.
            key_mask = torch.cat([text_mask, text_mask.new_ones(batch, image.shape[1])], dim=1)
            attention_kwargs = {"attention_mask": key_mask[:, None, None, :]}
    timestep = torch.as_tensor(sigma, device=device, dtype=torch.float32).reshape(-1).expand(batch)
    guidance_tensor = None
    if getattr(transformer.config, "guidance_embeds", False):
        value = FLUX_DEV_GUIDANCE if guidance is None else guidance
        guidance_tensor = torch.as_tensor(value, device=device, dtype=torch.float32).reshape(-1).expand(batch)
    out = transformer(
        hidden_states=image.to(dtype),
        encoder_hidden_states=context.to(device=device, dtype=dtype),
        pooled_projections=pooled.to(device=device, dtype=dtype),
        timestep=timestep.to(dtype),
        img_ids=image_ids,
        txt_ids=text_position_ids(context.shape[1], device=device),
        guidance=None if guidance_tensor is None else guidance_tensor.to(dtype),
        joint_attention_kwargs=attention_kwargs,
        return_dict=False,
    )[0]
    return out[:, :image_tokens]  # [batch, patches, C*4]


def flux_forward(
    transformer,
    latents: torch.Tensor,
    sigma: torch.Tensor | float,
    context: torch.Tensor,
    pooled: torch.Tensor,
    guidance: float | torch.Tensor | None = None,
    reference_latents: Sequence[torch.Tensor] | None = None,
    reference_method: str = DEFAULT_REFERENCE_METHOD,
) -> torch.Tensor:
    """:func:`flux_velocity_tokens` unpacked: the target image's velocity [batch, C, H, W], in ``latents``' dtype."""
    height, width = latents.shape[-2:]
    out = flux_velocity_tokens(
        transformer, latents, sigma, context, pooled, guidance, reference_latents, reference_method
    )
    return unpack_latents(out, height, width).to(latents.dtype)
