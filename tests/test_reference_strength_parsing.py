"""reference_strength without ComfyUI: the syntax, the strength at a time, and the attention bias it adds."""

from __future__ import annotations

import math

import pytest
import torch

from dla_core.errors import DLAInputError
from dla_core.schedule.strength import (
    ReferenceStrength,
    add_key_bias,
    check_strength_count,
    is_neutral,
    parse_reference_strength,
    reference_key_bias,
    strengths_at,
)


def test_constants_and_ramps_parse_in_reference_order():
    assert parse_reference_strength("1.0, 0.6") == (ReferenceStrength(1.0, 1.0), ReferenceStrength(0.6, 0.6))
    assert parse_reference_strength("0.95-0.5:1.0>0.3") == (ReferenceStrength(1.0, 0.3, 0.95, 0.5),)
    assert parse_reference_strength(" 1 > 0 , .5") == (ReferenceStrength(1.0, 0.0), ReferenceStrength(0.5, 0.5))
    assert parse_reference_strength("0.2>0.9") == (ReferenceStrength(0.2, 0.9),)  # a ramp may rise


@pytest.mark.parametrize("empty", ["", "   ", None])
def test_an_empty_strength_is_every_reference_at_one(empty):
    assert parse_reference_strength(empty) == ()
    assert is_neutral(parse_reference_strength(empty))


def test_only_constant_ones_are_neutral():
    assert is_neutral(parse_reference_strength("1, 1.0"))
    assert not is_neutral(parse_reference_strength("1, 0.99"))
    assert not is_neutral(parse_reference_strength("1>1e-9"))


def test_a_ramp_holds_its_ends_and_is_linear_between():
    (ramp,) = parse_reference_strength("0.95-0.5:1.0>0.3")
    assert ramp.at(1.0) == 1.0 and ramp.at(0.95) == 1.0
    assert ramp.at(0.5) == pytest.approx(0.3) and ramp.at(0.1) == pytest.approx(0.3)
    assert ramp.at(0.725) == pytest.approx(0.65)  # halfway in t, halfway in strength
    (whole,) = parse_reference_strength("1>0")
    assert [whole.at(t) for t in (1.0, 0.75, 0.0)] == [1.0, 0.75, 0.0]  # over all of t: the strength is t


def test_references_after_the_last_value_keep_strength_one():
    strengths = parse_reference_strength("0.5")
    assert strengths_at(strengths, 3, 0.7) == (0.5, 1.0, 1.0)
    assert strengths_at(strengths, 0, 0.7) == ()


@pytest.mark.parametrize(
    "text, words",
    [
        ("-0.5", "item 1 ('-0.5') has the strength -0.5, outside [0, 1]"),
        ("1, nan", "item 2 ('nan') has a non-finite strength"),
        ("1.5", "outside [0, 1]"),
        ("0.95-0.5:1.0>-0.3", "outside [0, 1]"),
        ("1.2-0.5:1>0.3", "ramp whose times leave [0, 1]"),
        ("0.5-0.9:1>0.3", "out of order or empty"),
        ("inf-0:1>0", "non-finite time"),
        ("strong", "neither a strength nor a ramp"),
        ("1,,0.5", "item 2 ('') is neither"),
    ],
)
def test_bad_strengths_name_the_item_and_show_the_syntax(text, words):
    with pytest.raises(DLAInputError) as error:
        parse_reference_strength(text)
    assert words in str(error.value)
    assert "'1.0, 0.6'" in str(error.value) and "'0.95-0.5:1.0>0.3'" in str(error.value)


def test_more_strengths_than_references_is_refused():
    check_strength_count(parse_reference_strength("1, 0.5"), 2)
    with pytest.raises(DLAInputError, match="gives 2 values .* holds 1 reference"):
        check_strength_count(parse_reference_strength("1, 0.5"), 1)


def test_the_bias_is_log_strength_on_each_references_trailing_keys():
    # 3 text/image keys, then reference 1 (2 tokens), then reference 2 (1 token)
    bias = reference_key_bias([0.5, 0.0], [2, 1], 6, dtype=torch.float32, device="cpu")
    assert bias.shape == (1, 1, 1, 6)
    expected = [0.0, 0.0, 0.0, math.log(0.5), math.log(0.5), -math.inf]
    assert bias.flatten().tolist() == pytest.approx(expected)
    assert reference_key_bias([1.0, 1.0], [2, 1], 6, dtype=torch.float32, device="cpu") is None
    with pytest.raises(DLAInputError, match="keys"):
        reference_key_bias([0.5], [8], 6, dtype=torch.float32, device="cpu")


def test_the_bias_scales_the_attention_to_a_reference_by_its_strength():
    # attention weight of one query over 4 keys (last one a reference): softmax(logits + log s)
    logits = torch.tensor([0.3, -0.2, 0.5, 0.1])
    for strength in (0.75, 0.25, 0.0):
        bias = reference_key_bias([strength], [1], 4, dtype=torch.float32, device="cpu").flatten()
        weights = torch.softmax(logits + bias, dim=-1)
        unnormalised = logits.exp() * torch.tensor([1.0, 1.0, 1.0, strength])
        assert torch.allclose(weights, unnormalised / unnormalised.sum())


def test_the_bias_joins_a_mask_the_model_already_has():
    bias = reference_key_bias([0.0], [1], 3, dtype=torch.float32, device="cpu")
    assert torch.equal(add_key_bias(None, bias), bias)
    keep = torch.tensor([[True, False, True]])  # [queries, keys]
    combined = add_key_bias(keep, bias)
    assert combined.shape == (1, 1, 1, 3) and combined.flatten().tolist() == [0.0, -math.inf, -math.inf]
    additive = torch.full((2, 1, 3), -1.0)  # [batch, queries, keys]
    assert add_key_bias(additive, bias).shape == (2, 1, 1, 3)
    assert add_key_bias(additive, bias)[:, 0, 0].tolist() == [[-1.0, -1.0, -math.inf]] * 2
