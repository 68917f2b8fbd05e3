"""Layer map: which MLLM layers a DLA draws on (LAP attention per layer), its summary, its picture, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dla_core.checkpoint import init_dla, save_dla
from dla_core.cli import main
from dla_core.dla import DLAConfig, DualLayerAggregation
from dla_core.errors import DLACheckpointError, DLAInputError
from dla_core.features import MLLMFeatures
from dla_core.lap import LayerwiseAttentionPooling
from dla_core.layer_map import KIND_COLOURS, layer_attention, plot_layer_map, readout_map, summarize
from dla_core.spec import MLLMSpec, read_mllm_spec

LAP_LAYERS, LAP_INPUT = 5, 24
LAYERS, WIDTH = 4, 32
# Per sample: token kinds left to right. t = instruction text, i = image, c = chat-template token
# (neither), p = padding (outside the attention mask).
LAYOUT = ["ctiiiittc", "ciicttcpp"]


def make_features(layout=LAYOUT, seed=0, layers=LAYERS, width=WIDTH, family="internvl"):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(
        len(layout), layers, len(layout[0]), width, generator=generator
    )  # [batch, layers, tokens, width]

    def mask(kinds):
        return torch.tensor([[kind in kinds for kind in row] for row in layout])

    return MLLMFeatures(
        hidden_states=hidden,
        image_mask=mask("i"),
        text_mask=mask("t"),
        attention_mask=mask("tic"),
        family=family,
        num_layers=layers,
        width=width,
        layer_indices=tuple(range(layers)),
    )


def make_dla(seed=0):
    torch.manual_seed(seed)
    config = DLAConfig(
        mllm_family="internvl",
        num_layers=LAYERS,
        mllm_width=WIDTH,
        lap_width=16,
        lap_heads=4,
        lap_mlp_hidden=32,
        context_width=40,
        pooled_width=12,
    )
    return DualLayerAggregation(config).eval()


def make_lap(pool="flatten", lap_width=16, out_width=20, input_norm=True, blocks=2, seed=0):
    torch.manual_seed(seed)
    return LayerwiseAttentionPooling(
        LAP_LAYERS,
        LAP_INPUT,
        lap_width,
        out_width,
        heads=4,
        blocks=blocks,
        mlp_hidden=32,
        pool=pool,
        input_norm=input_norm,
    ).eval()


def one_hot(position, length):
    values = torch.zeros(length)
    values[position] = 1.0
    return values


# ---------------------------------------------------------------------- the LAP
@pytest.mark.parametrize("pool", ["flatten", "weighted"])
def test_lap_layer_attention_reads_the_same_pass_as_forward_and_leaves_forward_unchanged(pool):
    lap = make_lap(pool)
    items = torch.randn(7, LAP_LAYERS, LAP_INPUT)  # [items, layers, width]
    with torch.no_grad():
        before = lap(items)
        _, output = lap.layer_attention(items)
        after = lap(items)
    assert torch.equal(before, after)
    assert torch.allclose(output, before, atol=1e-6)


@pytest.mark.parametrize("pool", ["flatten", "weighted"])
def test_lap_layer_shares_are_non_negative_and_sum_to_one_per_token(pool):
    lap = make_lap(pool)
    with torch.no_grad():
        shares, _ = lap.layer_attention(torch.randn(9, LAP_LAYERS, LAP_INPUT))
    assert shares.shape == (9, LAP_LAYERS)
    assert (shares >= 0).all()
    assert torch.allclose(shares.sum(-1), torch.ones(9), atol=1e-6)
    assert (shares.max(-1).values < 0.9).all()  # a random LAP spreads over layers


@pytest.mark.parametrize("pool", ["flatten", "weighted"])
@pytest.mark.parametrize("layer", [0, 2, -1])
def test_identity_lap_puts_all_attention_on_its_layer(pool, layer):
    lap = make_lap(pool, lap_width=LAP_INPUT, out_width=LAP_INPUT, input_norm=False)
    lap.init_identity(layer)
    with torch.no_grad():
        shares, _ = lap.layer_attention(torch.randn(6, LAP_LAYERS, LAP_INPUT))
    assert torch.equal(shares, one_hot(layer, LAP_LAYERS).expand(6, -1))
    assert torch.equal(lap.readout_weights(), one_hot(layer, LAP_LAYERS))


def test_identity_lap_stacking_two_layers_shares_only_between_them_by_their_norms():
    lap = make_lap("flatten", lap_width=LAP_INPUT, out_width=2 * LAP_INPUT, input_norm=False)
    lap.init_identity_stack([1, 3])
    items = torch.randn(4, LAP_LAYERS, LAP_INPUT)
    with torch.no_grad():
        shares, _ = lap.layer_attention(items)
    norms = items[:, [1, 3]].norm(dim=-1)  # [items, 2]: the pooled output is [layer 1 | layer 3]
    expected = torch.zeros(4, LAP_LAYERS)
    expected[:, [1, 3]] = norms / norms.sum(-1, keepdim=True)
    assert torch.allclose(shares, expected, atol=1e-6)


def test_attention_branch_mixes_layers_by_its_norm_share_a_known_value():
    # One block whose attention is uniform (q = k = v = 0) and whose attention branch adds a constant
    # vector b (|b| = 1); the pooling reads layer 0 only; item 0's layer 0 has norm 3. Position 0
    # after the block is (3 * own + 1 * mean of all 4 layers) / (3 + 1): shares 13/16, 1/16, 1/16, 1/16.
    torch.manual_seed(0)
    lap = LayerwiseAttentionPooling(4, 8, 8, 8, heads=2, blocks=1, mlp_hidden=16, input_norm=False).eval()
    with torch.no_grad():
        lap.init_identity(0)  # zero residual branches, zero layer embedding, pool reads layer 0
        block = lap.blocks[0]
        block.qkv.weight.zero_()
        block.attn_out.bias.copy_(one_hot(5, 8))
    items = torch.randn(1, 4, 8)
    items[0, 0] = 3 * one_hot(2, 8)
    with torch.no_grad():
        shares, output = lap.layer_attention(items)
    assert torch.allclose(shares, torch.tensor([[13 / 16, 1 / 16, 1 / 16, 1 / 16]]), atol=1e-6)
    assert torch.allclose(output, lap(items), atol=1e-6)


def test_readout_weights_of_the_weighted_pool_are_the_absolute_layer_weights():
    lap = make_lap("weighted")
    with torch.no_grad():
        lap.layer_weights.copy_(torch.tensor([1.0, -3.0, 0.0, 4.0, 0.0]))
    assert torch.allclose(lap.readout_weights(), torch.tensor([0.125, 0.375, 0.0, 0.5, 0.0]))


# ---------------------------------------------------------------------- the DLA over one encoding
def test_map_of_a_random_dla_sums_to_one_per_kind_and_counts_the_valid_tokens():
    layer_map = layer_attention(make_dla(), make_features())
    assert layer_map.layers == tuple(range(LAYERS))
    assert layer_map.tokens == {"text": 5, "image": 6}  # LAYOUT: 3 + 2 text, 4 + 2 image tokens
    for kind in ("text", "image"):
        assert layer_map.shares[kind].shape == (LAYERS,)
        assert torch.allclose(layer_map.shares[kind].sum(), torch.tensor(1.0), atol=1e-6)
    assert not torch.allclose(layer_map.shares["text"], layer_map.shares["image"])  # two LAPs, two maps


@pytest.mark.parametrize("layer", [0, 17, 28])
def test_map_of_an_identity_dla_is_all_on_the_identity_layer(layer):
    dla = init_dla(MLLMSpec("internvl", 29, 32), init="identity", identity_layer=layer)
    features = make_features(layers=29, width=32)
    layer_map = layer_attention(dla, features)
    for kind in ("text", "image"):
        assert torch.equal(layer_map.shares[kind], one_hot(layer, 29))
    assert f"strongest: layer {layer} (100%)" in summarize(layer_map)


def test_map_of_a_dla_reading_a_layer_subset_is_indexed_by_mllm_layer_numbers():
    # Like a FLUX.2 DLA, it reads some layers only (1, 3, 4 of 6); the map names them by MLLM layer number.
    # identity_layer is a position in the layers the DLA reads: position 1 of [1, 3, 4] is MLLM layer 3.
    dla = init_dla(MLLMSpec("internvl", 6, 16), init="identity", identity_layer=1, layer_indices=[1, 3, 4])
    layer_map = layer_attention(dla, make_features(layers=6, width=16))
    assert layer_map.layers == (1, 3, 4)
    assert torch.equal(layer_map.shares["text"], torch.tensor([0.0, 1.0, 0.0]))
    assert "strongest: layer 3 (100%)" in summarize(layer_map)


def test_average_ignores_padding_and_template_tokens_even_when_a_mask_marks_them():
    dla = make_dla()
    features = make_features()
    valid = features.attention_mask
    # The encoder's masks never mark padding, but the average must not depend on it: mark every
    # position as text (padding and template included) and give the positions outside the
    # attention mask huge states.
    marked = MLLMFeatures(
        hidden_states=torch.where(valid[:, None, :, None], features.hidden_states, 1e3 * features.hidden_states),
        image_mask=features.image_mask,
        text_mask=~features.image_mask,
        attention_mask=valid,
        family=features.family,
        num_layers=features.num_layers,
        width=features.width,
        layer_indices=features.layer_indices,
    )
    layer_map = layer_attention(dla, marked)
    per_token = marked.hidden_states.permute(0, 2, 1, 3)  # [batch, tokens, layers, width]
    with torch.no_grad():
        text_rows = dla.lap_text.layer_attention(per_token[~features.image_mask & valid])[0]
        all_rows = dla.lap_text.layer_attention(per_token[~features.image_mask])[0]
    assert layer_map.tokens["text"] == 10  # 5 text + 5 template tokens; not the 2 padding positions
    assert torch.allclose(layer_map.shares["text"], text_rows.mean(0), atol=1e-7)
    # Counting the two padding positions would change the average: the test can fail.
    assert not torch.allclose(all_rows.mean(0), text_rows.mean(0), atol=1e-3)


def test_padding_states_never_change_the_map():
    dla = make_dla()
    features = make_features()
    changed = features.to()
    changed.hidden_states = torch.where(
        features.attention_mask[:, None, :, None], features.hidden_states, torch.randn_like(features.hidden_states)
    )
    first, second = layer_attention(dla, features), layer_attention(dla, changed)
    for kind in ("text", "image"):
        assert torch.equal(first.shares[kind], second.shares[kind])


def test_text_and_image_averages_use_their_own_tokens_and_their_own_lap():
    dla = make_dla()
    features = make_features()
    per_token = features.hidden_states.permute(0, 2, 1, 3)
    with torch.no_grad():
        image_rows = dla.lap_image.layer_attention(per_token[features.image_mask])[0]
    assert torch.allclose(layer_attention(dla, features).shares["image"], image_rows.mean(0), atol=1e-7)


def test_more_tokens_than_one_chunk_give_one_row_per_token_and_the_same_average():
    dla = make_dla()
    features = make_features(layout=["c" + "t" * 300 + "i" * 5 + "c"])
    rows = dla.layer_attention(features)
    assert rows["text"].shape == (300, LAYERS) and rows["image"].shape == (5, LAYERS)
    with torch.no_grad():
        whole = dla.lap_text.layer_attention(features.hidden_states.permute(0, 2, 1, 3)[features.text_mask])[0]
    assert torch.allclose(rows["text"], whole, atol=1e-6)


def test_an_encoding_without_image_tokens_maps_text_only():
    layer_map = layer_attention(make_dla(), make_features(layout=["cttttc", "cttcpp"]))
    assert layer_map.shares["image"] is None and layer_map.tokens["image"] == 0
    assert "image tokens: none in this encoding" in summarize(layer_map)


def test_features_of_another_mllm_are_refused_with_the_dla_message():
    with pytest.raises(DLACheckpointError, match="load the DLA trained for this MLLM"):
        layer_attention(make_dla(), make_features(family="qwen2_5_vl"))


def test_summary_gives_shallow_middle_deep_shares_of_the_mllm_thirds():
    dla = init_dla(MLLMSpec("internvl", 29, 32), init="identity", identity_layer=12)
    text = summarize(layer_attention(dla, make_features(layers=29, width=32))).splitlines()[1]
    assert text == (
        "text tokens (5): shallow 0% / middle 100% / deep 0% (MLLM layers 0-9 / 10-19 / 20-28); "
        "strongest: layer 12 (100%)"
    )


def test_weights_only_map_of_an_identity_dla_says_what_it_is():
    dla = init_dla(MLLMSpec("internvl", 29, 32), init="identity", identity_layer=-1)
    layer_map = readout_map(dla)
    assert torch.equal(layer_map.shares["text"], one_hot(28, 29))
    assert "no encoding given" in summarize(layer_map)


# ---------------------------------------------------------------------- the picture
def bar_columns(pixels: np.ndarray, colour) -> np.ndarray:
    """x positions holding a pixel of exactly ``colour`` (only bars are drawn in the kind colours)."""
    return np.nonzero((pixels == np.array(colour, dtype=np.uint8)).all(-1).any(0))[0]


@pytest.mark.parametrize("size", [(768, 512), (300, 200)])
def test_plot_is_an_rgb_image_of_the_requested_size(size):
    pixels = plot_layer_map(layer_attention(make_dla(), make_features()), *size)
    assert pixels.shape == (size[1], size[0], 3) and pixels.dtype == np.uint8
    for kind in ("text", "image"):  # every layer has a bar: four separate runs of columns
        columns = bar_columns(pixels, KIND_COLOURS[kind])
        assert len(np.split(columns, np.nonzero(np.diff(columns) > 1)[0] + 1)) == LAYERS


def test_plot_of_an_identity_dla_has_one_bar_at_the_identity_layer():
    dla = init_dla(MLLMSpec("internvl", 29, 32), init="identity", identity_layer=-1)
    pixels = plot_layer_map(layer_attention(dla, make_features(layers=29, width=32)), 640, 400)
    for kind in ("text", "image"):
        columns = bar_columns(pixels, KIND_COLOURS[kind])
        assert len(columns) > 5 and columns.min() > 640 * 28 / 29 - 20  # the last of 29 slots only


def test_plot_without_image_tokens_draws_no_image_bars():
    pixels = plot_layer_map(layer_attention(make_dla(), make_features(layout=["cttttc"])))
    assert len(bar_columns(pixels, KIND_COLOURS["text"])) > 0
    assert len(bar_columns(pixels, KIND_COLOURS["image"])) == 0


def test_plot_smaller_than_the_minimum_is_refused():
    with pytest.raises(DLAInputError, match="at least 128x128"):
        plot_layer_map(readout_map(make_dla()), 100, 300)


# ---------------------------------------------------------------------- the CLI
def test_inspect_plot_without_an_encoding_writes_the_weights_map(tmp_path, capsys):
    checkpoint = save_dla(
        init_dla(MLLMSpec("internvl", 6, 16), init="identity", identity_layer=2), tmp_path / "d.safetensors"
    )
    out = tmp_path / "map.png"
    assert main(["inspect", str(checkpoint), "--plot", str(out), "--width", "400", "--height", "300"]) == 0
    printed = capsys.readouterr().out
    assert "no encoding given" in printed and "strongest: layer 2 (100%)" in printed
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (400, 300) and image.mode == "RGB"


def test_inspect_plot_with_an_mllm_maps_the_encoding(tmp_path, capsys, tiny_internvl_dir, make_reference):
    spec = read_mllm_spec(tiny_internvl_dir)
    checkpoint = save_dla(init_dla(spec, init="identity", identity_layer=1), tmp_path / "dla.safetensors")
    reference = tmp_path / "ref.png"
    make_reference().save(reference)
    out = tmp_path / "maps" / "map.png"
    argv = ["inspect", str(checkpoint), "--plot", str(out), "--mllm", str(tiny_internvl_dir)]
    argv += ["--prompt", "a dog on a beach", "--reference", str(reference), "--dtype", "fp32"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "LAP attention, averaged over the tokens" in printed
    assert printed.count("strongest: layer 1 (100%)") == 2  # text and image tokens
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (768, 512)


def test_inspect_with_an_mllm_of_another_family_is_one_clean_error(
    tmp_path, capsys, tiny_internvl_dir, tiny_qwen25vl_dir
):
    checkpoint = save_dla(init_dla(read_mllm_spec(tiny_internvl_dir)), tmp_path / "dla.safetensors")
    argv = ["inspect", str(checkpoint), "--plot", str(tmp_path / "m.png"), "--mllm", str(tiny_qwen25vl_dir)]
    assert main(argv + ["--prompt", "x", "--reference", str(tmp_path / "none.png")]) == 2
    assert "load the DLA trained for this MLLM" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()


def test_inspect_prompt_without_mllm_asks_for_it(tmp_path, capsys):
    checkpoint = save_dla(make_dla(), tmp_path / "dla.safetensors")
    assert main(["inspect", str(checkpoint), "--prompt", "a dog"]) == 2
    captured = capsys.readouterr()
    assert "give its folder with --mllm" in captured.err and captured.out == ""


def test_inspect_mllm_without_a_reference_asks_for_one_before_reading_anything(tmp_path, capsys):
    checkpoint = save_dla(make_dla(), tmp_path / "dla.safetensors")
    argv = ["inspect", str(checkpoint), "--mllm", str(tmp_path / "no-such-mllm"), "--prompt", "a dog"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "With --mllm, give --reference" in captured.err and captured.out == ""


def test_inspect_plot_to_a_non_png_name_is_refused(tmp_path, capsys):
    checkpoint = save_dla(make_dla(), tmp_path / "dla.safetensors")
    assert main(["inspect", str(checkpoint), "--plot", str(tmp_path / "map.jpg")]) == 2
    assert "ending in .png" in capsys.readouterr().err
    assert not (tmp_path / "map.jpg").exists()


class _Stop(Exception):
    pass


def test_the_map_calls_check_interrupt_before_each_lap_block_and_stops_where_it_raises():
    """Cancel in the Layer Map node: the hook runs before every LAP block of every chunk of tokens, and what it
    raises stops the map there."""
    dla = make_dla()
    features = make_features(layout=["c" + "t" * 600 + "i" * 5 + "c"])  # text: 3 chunks of <= 256; image: 1
    blocks_per_chunk = len(dla.lap_text.blocks)
    assert blocks_per_chunk >= 1 and len(dla.lap_image.blocks) == blocks_per_chunk
    calls = []
    layer_attention(dla, features, check_interrupt=lambda: calls.append(1))
    assert len(calls) == 4 * blocks_per_chunk

    seen = []

    def stop_on_second():
        seen.append(1)
        if len(seen) == 2:
            raise _Stop

    with pytest.raises(_Stop):
        layer_attention(dla, features, check_interrupt=stop_on_second)
    assert len(seen) == 2
