"""Layerwise Attention Pooling: attends across layers only, never across tokens."""

import pytest
import torch

from dla_core.errors import DLAInputError
from dla_core.lap import LayerwiseAttentionPooling

LAYERS, WIDTH = 5, 24


def make_lap(pool="flatten", lap_width=16, out_width=20, input_norm=True, seed=0):
    torch.manual_seed(seed)
    return LayerwiseAttentionPooling(
        LAYERS, WIDTH, lap_width, out_width, heads=4, blocks=2, mlp_hidden=32, pool=pool, input_norm=input_norm
    )


@pytest.mark.parametrize("pool", ["flatten", "weighted"])
def test_permuting_tokens_permutes_outputs_exactly(pool):
    lap = make_lap(pool)
    hidden = torch.randn(2, LAYERS, 9, WIDTH)  # [batch, layers, tokens, width]
    order = torch.randperm(9)
    with torch.no_grad():
        assert torch.equal(lap(hidden[:, :, order])[:, order.argsort()], lap(hidden))


def test_changing_one_token_changes_only_that_tokens_output():
    lap = make_lap()
    hidden = torch.randn(1, LAYERS, 6, WIDTH)
    changed = hidden.clone()
    changed[:, :, 3] = torch.randn(LAYERS, WIDTH) * 10
    with torch.no_grad():
        before, after = lap(hidden), lap(changed)
    others = [0, 1, 2, 4, 5]
    assert torch.equal(before[:, others], after[:, others])
    assert not torch.allclose(before[:, 3], after[:, 3])


def test_four_dim_and_gathered_inputs_agree():
    lap = make_lap()
    hidden = torch.randn(2, LAYERS, 3, WIDTH)
    items = hidden.permute(0, 2, 1, 3).reshape(6, LAYERS, WIDTH)  # [items, layers, width]
    with torch.no_grad():
        assert torch.allclose(lap(hidden).reshape(6, -1), lap(items), atol=1e-6)


def test_output_depends_on_every_layer():
    lap = make_lap()
    hidden = torch.randn(1, LAYERS, 4, WIDTH)
    with torch.no_grad():
        base = lap(hidden)
        for layer in range(LAYERS):
            changed = hidden.clone()
            changed[:, layer] += torch.randn(4, WIDTH)  # not a constant shift: the input norm removes those
            assert not torch.allclose(lap(changed), base), f"layer {layer} is ignored"


def test_layer_order_matters():
    # The learned layer embedding lets the blocks tell layers apart.
    lap = make_lap()
    hidden = torch.randn(1, LAYERS, 4, WIDTH)
    with torch.no_grad():
        assert not torch.allclose(lap(hidden.flip(1)), lap(hidden))


@pytest.mark.parametrize("pool", ["flatten", "weighted"])
@pytest.mark.parametrize("layer", [0, 2, -1])
def test_identity_init_returns_the_selected_layer_exactly(pool, layer):
    lap = LayerwiseAttentionPooling(LAYERS, WIDTH, WIDTH, WIDTH, heads=4, mlp_hidden=32, pool=pool, input_norm=False)
    lap.init_identity(layer)
    hidden = torch.randn(2, LAYERS, 7, WIDTH)
    with torch.no_grad():
        assert torch.equal(lap(hidden), hidden[:, layer])


def test_identity_init_keeps_gradients_flowing_to_every_layer():
    lap = LayerwiseAttentionPooling(LAYERS, WIDTH, WIDTH, WIDTH, heads=4, mlp_hidden=32, input_norm=False)
    lap.init_identity(-1)
    lap(torch.randn(3, LAYERS, WIDTH)).square().sum().backward()
    assert lap.pool_fc.weight.grad[:, :WIDTH].abs().sum() > 0  # layer 0's slot can still learn
    assert lap.blocks[0].attn_out.weight.grad.abs().sum() > 0


def test_identity_init_needs_matching_widths():
    lap = make_lap(lap_width=16, input_norm=False)
    with pytest.raises(DLAInputError, match="lap_width equal to the MLLM width"):
        lap.init_identity(-1)


def test_identity_layer_out_of_range_is_refused():
    lap = LayerwiseAttentionPooling(LAYERS, WIDTH, WIDTH, WIDTH, heads=4, mlp_hidden=32, input_norm=False)
    with pytest.raises(DLAInputError, match="Identity layer 5 is out of range for 5 layers"):
        lap.init_identity(5)


def test_wrong_layer_count_is_refused():
    lap = make_lap()
    with pytest.raises(DLAInputError, match="built for 5 layers of width 24, got 4 layers of width 24"):
        lap(torch.randn(1, 4, 3, WIDTH))


def test_heads_must_divide_width():
    with pytest.raises(DLAInputError, match="not divisible by 5 attention heads"):
        LayerwiseAttentionPooling(LAYERS, WIDTH, 16, 16, heads=5)


def test_weighted_pool_has_far_fewer_parameters_than_flatten():
    def pool_params(pool):
        return sum(p.numel() for p in make_lap(pool, lap_width=16, out_width=16).pool_fc.parameters())

    assert pool_params("flatten") == LAYERS * 16 * 16 + 16
    assert pool_params("weighted") == 16 * 16 + 16
