"""Layer map: which MLLM layers a DLA checkpoint draws on, for text tokens and for image tokens.

The paper's central question is whether shallow or deep MLLM layers carry what the DiT needs.
A trained DLA answers it in its weights; this module reads the answer out:

* :func:`layer_attention` runs both LAPs on one encoding and averages, over its valid text tokens
  and over its valid image tokens separately, each token's share of its LAP output per MLLM layer
  (:meth:`~dla_core.lap.LayerwiseAttentionPooling.layer_attention`: the blocks' attention across
  layers rolled out through the residual stream and read out by the pooling map). Each average sums to 1.
* :func:`readout_map` needs no encoding: the pooling maps' weight per layer slot only
  (:meth:`~dla_core.lap.LayerwiseAttentionPooling.readout_weights`), for a checkpoint on its own.
* :func:`plot_layer_map` draws a map as an RGB picture (Pillow only: no plotting library needed)
  and :func:`summarize` says it in words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .dla import DualLayerAggregation
from .errors import DLAInputError
from .features import MLLMFeatures

KINDS = ("text", "image")
KIND_COLOURS = {"text": (31, 119, 180), "image": (230, 115, 0)}  # the bars; nothing else is drawn in these
LABEL_COLOURS = {"text": (20, 80, 125), "image": (160, 80, 0)}
DEPTH_NAMES = ("shallow", "middle", "deep")
MIN_PLOT_SIDE = 128
WEIGHTS_ONLY_NOTE = "pooling weights only (no encoding given: the blocks' attention is not included)"


@dataclass
class LayerMap:
    """Share of the DLA's output per MLLM layer, for text tokens and for image tokens.

    ``layers``: the MLLM layer numbers the DLA reads (hidden state k: 0 = embeddings), in order.
    ``shares[kind]``: ``[len(layers)]`` float tensor summing to 1, or ``None`` when the encoding has
    no token of that kind. ``tokens[kind]``: how many tokens were averaged (0 for a weights-only map).
    """

    layers: tuple[int, ...]
    num_layers: int  # hidden states of the MLLM (embeddings + decoder layers)
    shares: dict[str, Optional[torch.Tensor]]
    tokens: dict[str, int] = field(default_factory=dict)
    from_encoding: bool = True
    title: str = ""

    def depth_shares(self, kind: str) -> Optional[tuple[float, float, float]]:
        """The ``kind``'s share on the shallow, middle and deep third of the MLLM's layers."""
        shares = self.shares.get(kind)
        if shares is None:
            return None
        totals = [0.0, 0.0, 0.0]
        for layer, share in zip(self.layers, shares.tolist()):
            totals[depth_third(layer, self.num_layers)] += share
        return tuple(totals)

    def third_ranges(self) -> list[str]:
        """The MLLM layer numbers of each third, e.g. ``["0-9", "10-19", "20-28"]``."""
        ranges = []
        for third in range(3):
            members = [layer for layer in range(self.num_layers) if depth_third(layer, self.num_layers) == third]
            if not members:
                ranges.append("-")
            else:
                ranges.append(str(members[0]) if len(members) == 1 else f"{members[0]}-{members[-1]}")
        return ranges


def depth_third(layer: int, num_layers: int) -> int:
    """0 (shallow), 1 (middle) or 2 (deep): which third of ``num_layers`` hidden states ``layer`` is in."""
    return min(2, 3 * layer // max(num_layers, 1))


def layer_attention(
    dla: DualLayerAggregation,
    features: MLLMFeatures,
    title: str = "",
    check_interrupt: Callable[[], None] | None = None,
) -> LayerMap:
    """Average each kind's per-token layer shares over one encoding (valid tokens only).

    Padding and chat-template tokens are never read; a kind with no token gets ``None``. Features of
    another MLLM than the DLA's raise :class:`~dla_core.errors.DLACheckpointError` (as the DLA does).
    ``check_interrupt``: optional, called before each LAP block; whatever it raises stops the map.
    """
    per_token = dla.layer_attention(features, check_interrupt)
    shares = {kind: (rows.float().mean(dim=0).cpu() if rows.shape[0] else None) for kind, rows in per_token.items()}
    if all(value is None for value in shares.values()):
        raise DLAInputError("The MLLM features hold no text and no image tokens: there is nothing to map.")
    return LayerMap(
        layers=tuple(dla.config.used_layers),
        num_layers=dla.config.num_layers,
        shares=shares,
        tokens={kind: int(rows.shape[0]) for kind, rows in per_token.items()},
        title=title,
    )


def readout_map(dla: DualLayerAggregation, title: str = "") -> LayerMap:
    """A map from the checkpoint alone: each LAP's pooling weight per layer slot (no attention)."""
    return LayerMap(
        layers=tuple(dla.config.used_layers),
        num_layers=dla.config.num_layers,
        shares={"text": dla.lap_text.readout_weights().cpu(), "image": dla.lap_image.readout_weights().cpu()},
        tokens={kind: 0 for kind in KINDS},
        from_encoding=False,
        title=title,
    )


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def summarize_kind(layer_map: LayerMap, kind: str, ranges: bool = True) -> str:
    """One line for one kind, e.g. ``text tokens (12): shallow 10% / middle 28% / deep 62% ...``.

    ``ranges=False`` leaves out the thirds' layer numbers (the picture shades them).
    """
    shares = layer_map.shares.get(kind)
    if shares is None:
        return f"{kind} tokens: none in this encoding"
    depth = layer_map.depth_shares(kind)
    peak = int(torch.argmax(shares))
    count = f" ({layer_map.tokens.get(kind, 0)})" if layer_map.from_encoding else ""
    return (
        f"{kind} tokens{count}: "
        + " / ".join(f"{name} {_percent(value)}" for name, value in zip(DEPTH_NAMES, depth))
        + (f" (MLLM layers {' / '.join(layer_map.third_ranges())})" if ranges else "")
        + f"; strongest: layer {layer_map.layers[peak]} ({_percent(float(shares[peak]))})"
    )


def summarize(layer_map: LayerMap) -> str:
    """The map in words: what was measured, then one line per kind."""
    if layer_map.from_encoding:
        head = "Share of the DLA's output drawn from each MLLM layer (LAP attention, averaged over the tokens)"
    else:
        head = f"Share of each MLLM layer in the DLA's {WEIGHTS_ONLY_NOTE}"
    lines = [f"{layer_map.title}: {head}" if layer_map.title else head]
    lines += [summarize_kind(layer_map, kind) for kind in KINDS]
    return "\n".join(lines)


# ---------------------------------------------------------------------- drawing
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> float:
    return draw.textlength(text, font=font)


def _nice_top(value: float) -> float:
    """The y axis' top: the next tenth above ``value`` (at least 10%)."""
    return min(1.0, max(0.1, math.ceil(value * 10 - 1e-9) / 10))


def plot_layer_map(layer_map: LayerMap, width: int = 768, height: int = 512) -> np.ndarray:
    """Draw the map: one bar chart per kind (text above, image below), bars = share per MLLM layer.

    Both panels share one y scale; the shallow / middle / deep thirds of the MLLM are shaded. Returns
    ``[height, width, 3]`` uint8 RGB.
    """
    if width < MIN_PLOT_SIDE or height < MIN_PLOT_SIDE:
        raise DLAInputError(f"A layer map needs at least {MIN_PLOT_SIDE}x{MIN_PLOT_SIDE} pixels, got {width}x{height}.")
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    size = max(9, min(18, height // 32, width // 48))
    font, small = _font(size), _font(max(8, size - 3))
    margin = size
    title = layer_map.title or "DLA layer map"
    subtitle = "share of the output per MLLM layer (x: MLLM layer, 0 = embeddings)"
    if not layer_map.from_encoding:
        subtitle = f"{WEIGHTS_ONLY_NOTE}; x: MLLM layer"
    draw.text((margin, margin // 2), title, fill=(0, 0, 0), font=font)
    draw.text((margin, margin // 2 + size + 2), subtitle, fill=(90, 90, 90), font=small)
    top = margin // 2 + 2 * size + 8
    present = [layer_map.shares[kind] for kind in KINDS if layer_map.shares.get(kind) is not None]
    y_top = _nice_top(max(float(shares.max()) for shares in present) if present else 0.1)
    panel_height = (height - top - margin // 2) / len(KINDS)
    for index, kind in enumerate(KINDS):
        box = (margin, top + index * panel_height, width - margin, top + (index + 1) * panel_height)
        _draw_panel(draw, layer_map, kind, box, y_top, font, small, size)
    return np.asarray(image, dtype=np.uint8).copy()


def _draw_panel(draw, layer_map: LayerMap, kind: str, box, y_top: float, font, small, size: int) -> None:
    left, top, right, bottom = box
    draw.text((left, top), summarize_kind(layer_map, kind, ranges=False), fill=LABEL_COLOURS[kind], font=small)
    axis_left = left + _text_width(draw, "100%", small) + 6
    axis_top, axis_bottom, axis_right = top + size + 6, bottom - size - 8, right
    bars_top = axis_top + size + 2  # a strip above the bars for the thirds' names
    if axis_bottom - bars_top < 8:
        return
    count = len(layer_map.layers)
    slot = (axis_right - axis_left) / count
    # Shade the thirds (shallow / middle / deep) behind the bars, labelled at the top.
    for third, shade in zip(range(3), ((246, 246, 246), (232, 232, 232), (218, 218, 218))):
        columns = [i for i, layer in enumerate(layer_map.layers) if depth_third(layer, layer_map.num_layers) == third]
        if not columns:
            continue
        x0, x1 = axis_left + columns[0] * slot, axis_left + (columns[-1] + 1) * slot
        draw.rectangle((x0, axis_top, x1, axis_bottom), fill=shade)
        label = DEPTH_NAMES[third]
        if _text_width(draw, label, small) < x1 - x0:
            draw.text((x0 + 2, axis_top + 1), label, fill=(120, 120, 120), font=small)
    for tick in range(5):
        value = y_top * tick / 4
        y = axis_bottom - (axis_bottom - bars_top) * tick / 4
        draw.line((axis_left, y, axis_right, y), fill=(200, 200, 200))
        label = f"{round(100 * value, 1):g}%"
        draw.text(
            (axis_left - 4 - _text_width(draw, label, small), y - size // 2), label, fill=(60, 60, 60), font=small
        )
    shares = layer_map.shares.get(kind)
    if shares is None:
        note = f"no {kind} tokens in this encoding"
        x = (axis_left + axis_right - _text_width(draw, note, font)) / 2
        draw.text((x, (axis_top + axis_bottom - size) / 2), note, fill=(90, 90, 90), font=font)
    else:
        for column, share in enumerate(shares.tolist()):
            x0 = axis_left + column * slot + slot * 0.1
            x1 = axis_left + (column + 1) * slot - slot * 0.1
            y = axis_bottom - (axis_bottom - bars_top) * min(share, y_top) / y_top
            if share > 0:
                draw.rectangle((x0, min(y, axis_bottom - 1), max(x1, x0 + 1), axis_bottom), fill=KIND_COLOURS[kind])
    draw.line((axis_left, axis_bottom, axis_right, axis_bottom), fill=(0, 0, 0))
    label_width = max(_text_width(draw, str(layer), small) for layer in layer_map.layers) + 4
    step = max(1, math.ceil(label_width / slot))
    for column in range(0, count, step):
        label = str(layer_map.layers[column])
        x = axis_left + (column + 0.5) * slot - _text_width(draw, label, small) / 2
        draw.text((x, axis_bottom + 2), label, fill=(0, 0, 0), font=small)
