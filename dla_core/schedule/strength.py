"""Per-reference strength over time: attention-level weights for in-context reference latents.

A reference's strength ``s`` scales the attention every query pays to that reference's tokens: an
additive bias ``log(s)`` on the reference's key positions in every joint-attention layer of the DiT.
Unlike scaling or blending the reference latent itself (which shifts colours and, with FLUX-style
in-context conditioning, often does nothing), this does what it says: ``s = 1`` changes nothing,
``s = 0`` means no token attends to the reference at all (the output equals the conditioning without
it), and in between the attention mass on the reference falls monotonically with ``s``.

A strength is typed as text, one item per reference in the order the conditioning holds them
(the same order as ``reference_timing``)::

    "1.0, 0.6"                  reference 1 at full strength, reference 2 at 0.6 throughout
    "0.95-0.5:1.0>0.3, 0.8"     reference 1 ramps from 1.0 (t >= 0.95) to 0.3 (t <= 0.5), linear
                                in t between; reference 2 at 0.8
    "1>0"                       reference 1 fades linearly over the whole schedule (t = 1 -> 0)

A ramp is ``[high-low:]start>end``: ``start`` while ``t >= high``, ``end`` while ``t <= low``,
linear in between (``high-low`` as in ``reference_timing``; left out: ``1-0``). Strengths are in
[0, 1]. References after the last item keep strength 1; an empty text means every strength is 1,
and then nothing in the model is patched.

Everything here is free of ComfyUI: parsing with clear errors, the strengths at a time, and the
bias tensor an attention patch adds to the keys (:func:`reference_key_bias`, :func:`add_key_bias`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import DLAInputError

STRENGTH_EXAMPLE = "1.0, 0.6"
RAMP_EXAMPLE = "0.95-0.5:1.0>0.3"
MIN_STRENGTH = 0.0
MAX_STRENGTH = 1.0

_NUMBER = r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?))\s*"
_CONSTANT = re.compile(rf"^{_NUMBER}$", re.IGNORECASE)
_RAMP = re.compile(rf"^(?:{_NUMBER}-{_NUMBER}:)?{_NUMBER}>{_NUMBER}$", re.IGNORECASE)


@dataclass(frozen=True)
class ReferenceStrength:
    """One reference's strength over normalised time ``t``: ``start`` while ``t >= high``, ``end`` while ``t <= low``.

    Linear in ``t`` between ``high`` and ``low``; a constant strength has ``start == end``.
    """

    start: float
    end: float
    high: float = 1.0
    low: float = 0.0

    @property
    def constant(self) -> bool:
        return self.start == self.end

    def at(self, t: float) -> float:
        """The strength of a model call at normalised time ``t``."""
        if self.constant or t >= self.high:
            return self.start
        if t <= self.low:
            return self.end
        fraction = (self.high - t) / (self.high - self.low)  # 0 at high, 1 at low
        return self.start + (self.end - self.start) * fraction

    def __str__(self) -> str:
        if self.constant:
            return f"{self.start:g}"
        span = "" if (self.high, self.low) == (1.0, 0.0) else f"{self.high:g}-{self.low:g}:"
        return f"{span}{self.start:g}>{self.end:g}"


def _item_error(position: int, item: str, problem: str) -> DLAInputError:
    return DLAInputError(
        f"reference_strength item {position} ('{item.strip()}') {problem}: write one strength per reference separated "
        f"by commas, each a number from {MIN_STRENGTH:g} to {MAX_STRENGTH:g} (1 = the model's own attention, 0 = the "
        f"reference is ignored), e.g. '{STRENGTH_EXAMPLE}', or a ramp over t 'high-low:start>end', e.g. "
        f"'{RAMP_EXAMPLE}'."
    )


def _strength_value(position: int, item: str, text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _item_error(position, item, f"has a non-finite strength ({text.strip()})")
    if not MIN_STRENGTH <= value <= MAX_STRENGTH:
        raise _item_error(position, item, f"has the strength {value:g}, outside [{MIN_STRENGTH:g}, {MAX_STRENGTH:g}]")
    return value


def _parse_item(position: int, item: str) -> ReferenceStrength:
    constant = _CONSTANT.match(item)
    if constant:
        value = _strength_value(position, item, constant.group(1))
        return ReferenceStrength(value, value)
    ramp = _RAMP.match(item)
    if not ramp:
        raise _item_error(position, item, "is neither a strength nor a ramp")
    high_text, low_text, start_text, end_text = ramp.groups()
    high, low = (1.0, 0.0) if high_text is None else (float(high_text), float(low_text))
    if not (math.isfinite(high) and math.isfinite(low)):
        raise _item_error(position, item, "has a non-finite time")
    if not (0.0 <= low <= 1.0 and 0.0 <= high <= 1.0):
        raise _item_error(position, item, "has a ramp whose times leave [0, 1] (1 = pure noise, 0 = the clean image)")
    if not low < high:
        raise _item_error(
            position, item, "has a ramp whose times are out of order or empty (write 'high-low', high > low)"
        )
    return ReferenceStrength(
        _strength_value(position, item, start_text), _strength_value(position, item, end_text), high, low
    )


def parse_reference_strength(text: str | None) -> tuple[ReferenceStrength, ...]:
    """``"1.0, 0.95-0.5:1.0>0.3"`` -> one :class:`ReferenceStrength` per reference; ``""`` -> ``()``.

    Raises :class:`DLAInputError` naming the bad item (not a number or ramp, negative, NaN, above 1,
    ramp times outside [0, 1] or out of order).
    """
    if text is None or not str(text).strip():
        return ()
    return tuple(_parse_item(position, item) for position, item in enumerate(str(text).split(","), start=1))


def is_neutral(strengths: Sequence[ReferenceStrength]) -> bool:
    """True when every strength is a constant 1 (nothing to patch)."""
    return all(strength.constant and strength.start == 1.0 for strength in strengths)


def check_strength_count(strengths: Sequence[ReferenceStrength], reference_count: int) -> None:
    """Raise :class:`DLAInputError` when there are more strengths than references."""
    if len(strengths) > reference_count:
        raise DLAInputError(
            f"reference_strength gives {len(strengths)} values ({', '.join(map(str, strengths))}) but the "
            f"conditioning holds {reference_count} reference(s): give at most one strength per reference, in "
            "reference order (references after the last value keep strength 1)."
        )


def strengths_at(strengths: Sequence[ReferenceStrength], reference_count: int, t: float) -> tuple[float, ...]:
    """The strength of each of ``reference_count`` references at time ``t`` (no item: 1)."""
    return tuple(strengths[index].at(t) if index < len(strengths) else 1.0 for index in range(reference_count))


def describe_strengths(strengths: Sequence[ReferenceStrength]) -> str:
    """``"reference 1: 1; reference 2: 0.95-0.5:1>0.3"`` for the log."""
    return "; ".join(f"reference {index}: {strength}" for index, strength in enumerate(strengths, start=1))


def reference_key_bias(
    strengths: Sequence[float], token_counts: Sequence[int], key_length: int, *, dtype, device
) -> torch.Tensor | None:
    """The additive attention bias ``[1, 1, 1, key_length]``: ``log(s_i)`` on reference ``i``'s keys, 0 elsewhere.

    The in-context DiTs (FLUX.1 Kontext, FLUX.2, Qwen-Image-Edit, Krea 2) append the reference
    tokens, in conditioning order, after the text and the image being denoised, so reference ``i``
    owns ``token_counts[i]`` keys of the trailing ``sum(token_counts)``. ``s = 0`` gives ``-inf``
    (no query attends to that reference). Returns None when every strength is 1 (the caller then
    leaves the attention untouched, bit for bit).
    """
    strengths = list(strengths)[: len(token_counts)]
    if all(strength == 1.0 for strength in strengths):
        return None
    reference_tokens = sum(token_counts)
    if reference_tokens > key_length:
        raise DLAInputError(
            f"The attention sees {key_length} keys but the references carry {reference_tokens} tokens: this model "
            "does not lay out reference tokens after the text and the image, so reference_strength cannot find them."
        )
    bias = torch.zeros(key_length, dtype=torch.float32)
    position = key_length - reference_tokens
    for strength, count in zip(strengths, token_counts):
        bias[position : position + count] = math.log(strength) if strength > 0 else -math.inf
        position += count
    return bias.to(dtype=dtype, device=device).view(1, 1, 1, key_length)


def add_key_bias(mask: torch.Tensor | None, bias: torch.Tensor) -> torch.Tensor:
    """``mask`` (None, boolean keep-mask or additive float mask, as ComfyUI's attention takes them) plus ``bias``.

    ComfyUI's attention reads a 2-D mask as ``[queries, keys]`` and a 3-D one as ``[batch, queries, keys]``;
    both are lifted to 4-D first, so the sum broadcasts to ``[batch, heads, queries, keys]``.
    """
    if mask is None:
        return bias
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=bias.dtype, device=mask.device).masked_fill(~mask, -math.inf)
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    return mask.to(dtype=bias.dtype, device=bias.device) + bias
