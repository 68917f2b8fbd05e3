"""Per-reference timing (dla_core.schedule.timing): parsing, errors, active sets, and the probe that finds them all."""

from __future__ import annotations

import random

import pytest

from dla_core.errors import DLAInputError
from dla_core.schedule import (
    ReferenceRange,
    active_mask,
    check_reference_count,
    describe_mask,
    parse_reference_timing,
    probe_times,
)


def test_parse_the_documented_example():
    assert parse_reference_timing("0.95-0, 1-0.5") == (ReferenceRange(0.95, 0.0), ReferenceRange(1.0, 0.5))
    assert parse_reference_timing(" 1 - 0 ") == (ReferenceRange(1.0, 0.0),)
    assert parse_reference_timing(".5-.25,1e-1-0") == (ReferenceRange(0.5, 0.25), ReferenceRange(0.1, 0.0))


@pytest.mark.parametrize("empty", ["", "   ", None])
def test_empty_means_no_timing(empty):
    assert parse_reference_timing(empty) == ()


@pytest.mark.parametrize(
    "text,words",
    [
        ("0-0.95", "out of order"),  # low first
        ("0.5-0.5", "out of order or empty"),
        ("1.2-0", "leaves [0, 1]"),
        ("1--0.1", "leaves [0, 1]"),
        ("nan-0", "non-finite"),
        ("1-inf", "non-finite"),
        ("0.95", "is not a range"),
        ("0.95-0,", "item 2"),
        ("0.9-0; 1-0", "is not a range"),
        ("a-b", "is not a range"),
    ],
)
def test_bad_timing_names_the_item_and_the_fix(text, words):
    with pytest.raises(DLAInputError) as error:
        parse_reference_timing(text)
    message = str(error.value)
    assert words in message
    assert "0.95-0, 1-0.5" in message or "[0, 1]" in message


def test_active_range_bounds_follow_the_stage_convention():
    subject = ReferenceRange(0.95, 0.0)  # like stages 2+3 with tau1 = 0.95
    assert not subject.active(1.0) and not subject.active(0.95)
    assert subject.active(0.9499) and subject.active(0.0)
    early = ReferenceRange(1.0, 0.5)
    assert early.active(1.0) and early.active(0.5)
    assert not early.active(0.4999)


def test_references_after_the_last_range_stay_active():
    ranges = parse_reference_timing("0.5-0")
    assert active_mask(ranges, 3, 0.9) == (False, True, True)
    assert active_mask(ranges, 3, 0.2) == (True, True, True)
    assert active_mask((), 2, 0.7) == (True, True)


def test_more_ranges_than_references_is_an_error():
    ranges = parse_reference_timing("1-0, 0.5-0, 0.2-0")
    check_reference_count(ranges, 3)
    with pytest.raises(DLAInputError, match="3 ranges .* 2 reference"):
        check_reference_count(ranges, 2)


def test_probe_times_find_every_mask_a_dense_sweep_finds():
    """Invariant: the probes find exactly the masks of a fine sweep, for random timings and intervals."""
    rng = random.Random(0)
    for _ in range(200):
        ranges = []
        for _ in range(rng.randint(1, 4)):
            high, low = sorted((round(rng.random(), 2), round(rng.random(), 2)), reverse=True)
            if high == low:
                continue
            ranges.append(ReferenceRange(high, low))
        t_high, t_low = sorted((rng.random(), rng.random()), reverse=True)
        count = len(ranges) + 1
        # every piece between bounds on a 0.01 grid is hit by the sweep; bounds themselves are on the grid
        sweep = [t_high, t_low] + [i / 1000 for i in range(1001) if t_low <= i / 1000 <= t_high]
        expected = {active_mask(ranges, count, t) for t in sweep}
        assert {active_mask(ranges, count, t) for t in probe_times(ranges, t_high, t_low)} == expected


def test_probe_times_decrease_and_include_cuts():
    times = probe_times(parse_reference_timing("0.6-0.2"), 1.0, 0.0, cuts=(0.95, 0.85))
    assert times == sorted(times, reverse=True)
    for bound in (1.0, 0.95, 0.85, 0.6, 0.2, 0.0):
        assert bound in times


def test_describe_mask():
    assert describe_mask((True, False, True)) == "references 1, 3"
    assert describe_mask((False, True)) == "reference 2"
    assert describe_mask((False,)) == "no references"
