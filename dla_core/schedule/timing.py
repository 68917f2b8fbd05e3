"""Per-reference timing: each reference image active over its own range of normalised time.

Users ask for a reference strength that changes over the steps, and for several references
that each play their own role (a subject photo only once the layout is set, a style or pose
reference throughout). The paper's staging (arXiv 2605.26111, multi-stage denoising: semantics
early, identity late) is the one-reference case of this. A timing is typed as text, one range
per reference in the order the conditioning holds them::

    "0.95-0, 1-0.5"   reference 1 from t < 0.95 to the end; reference 2 from the start to t = 0.5

A range ``hi-lo`` makes its reference active while ``lo <= t < hi`` (``hi = 1`` includes t = 1,
pure noise), the same convention as the stages (stage 1 while ``t >= tau1``). References after
the last range are always active; an empty text means every reference is always active.

Everything here is pure (no ComfyUI): parsing with clear errors, the active set at a time,
and the times that meet every active set a sampler can meet between two times (so the guider
prepares exactly those conditionings once, before sampling).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..errors import DLAInputError

TIMING_EXAMPLE = "0.95-0, 1-0.5"
_NUMBER = r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?))\s*"
_RANGE = re.compile(rf"^{_NUMBER}-{_NUMBER}$", re.IGNORECASE)


@dataclass(frozen=True)
class ReferenceRange:
    """A reference is active while ``low <= t < high`` (``high == 1`` also includes t = 1)."""

    high: float
    low: float

    def active(self, t: float) -> bool:
        return self.low <= t and (t < self.high or self.high >= 1.0)

    def __str__(self) -> str:
        return f"{self.high:g}-{self.low:g}"


def parse_reference_timing(text: str) -> tuple[ReferenceRange, ...]:
    """``"0.95-0, 1-0.5"`` -> one :class:`ReferenceRange` per reference; ``""`` -> ``()``.

    Raises :class:`DLAInputError` naming the bad item when a range is not ``high-low`` with
    ``0 <= low < high <= 1`` (finite numbers, the noisier time first).
    """
    if text is None or not str(text).strip():
        return ()
    ranges = []
    for position, item in enumerate(str(text).split(","), start=1):
        match = _RANGE.match(item)
        if not match:
            raise DLAInputError(
                f"reference_timing item {position} ('{item.strip()}') is not a range 'high-low' of normalised times: "
                f"write one range per reference separated by commas, e.g. '{TIMING_EXAMPLE}' (1 = pure noise, "
                "0 = the clean image)."
            )
        high, low = float(match.group(1)), float(match.group(2))
        if not (math.isfinite(high) and math.isfinite(low)):
            raise DLAInputError(
                f"reference_timing item {position} ('{item.strip()}') has a non-finite number; use times between 0 "
                f"and 1, e.g. '{TIMING_EXAMPLE}'."
            )
        if not (0.0 <= low <= 1.0 and 0.0 <= high <= 1.0):
            raise DLAInputError(
                f"reference_timing item {position} ('{item.strip()}') leaves [0, 1]: times are normalised (1 = pure "
                "noise, 0 = the clean image)."
            )
        if not low < high:
            raise DLAInputError(
                f"reference_timing item {position} ('{item.strip()}') is out of order or empty: write the noisier "
                f"time first, 'high-low' with high > low, e.g. '{TIMING_EXAMPLE}' ('0.95-0': active from t < 0.95 "
                "to the end)."
            )
        ranges.append(ReferenceRange(high, low))
    return tuple(ranges)


def check_reference_count(ranges: Sequence[ReferenceRange], reference_count: int) -> None:
    """Raise :class:`DLAInputError` when there are more ranges than references."""
    if len(ranges) > reference_count:
        raise DLAInputError(
            f"reference_timing gives {len(ranges)} ranges ({', '.join(map(str, ranges))}) but the conditioning holds "
            f"{reference_count} reference(s): give at most one range per reference, in reference order (references "
            "after the last range stay active throughout)."
        )


def active_mask(ranges: Sequence[ReferenceRange], reference_count: int, t: float) -> tuple[bool, ...]:
    """Which of ``reference_count`` references are active at time ``t`` (no range: always)."""
    return tuple(index >= len(ranges) or ranges[index].active(t) for index in range(reference_count))


def probe_times(
    ranges: Sequence[ReferenceRange], t_high: float, t_low: float, cuts: Iterable[float] = ()
) -> list[float]:
    """Times that hit every piece of ``[t_low, t_high]`` cut at the range bounds and ``cuts`` (decreasing).

    Active sets only change at range bounds, so each bound inside the interval, the midpoints between
    consecutive bounds and both ends meet every active set (and, with the stage taus as ``cuts``, every
    (stage, active set) pair) a sampler can meet there.
    """
    t_high, t_low = max(t_high, t_low), min(t_high, t_low)
    bounds = {t_high, t_low}
    for value in [*(r.high for r in ranges), *(r.low for r in ranges), *cuts]:
        if t_low <= value <= t_high:
            bounds.add(value)
    points = sorted(bounds, reverse=True)
    probes = []
    for first, second in zip(points, points[1:]):
        probes += [first, (first + second) / 2]
    probes.append(points[-1])
    return probes


def describe_mask(mask: Sequence[bool]) -> str:
    """``(True, False)`` -> ``"references 1"``; all off -> ``"no references"``."""
    on = [str(index + 1) for index, active in enumerate(mask) if active]
    return f"reference{'s' if len(on) > 1 else ''} {', '.join(on)}" if on else "no references"
