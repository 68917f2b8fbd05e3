"""Dual Layer Aggregation: fusion order, padding, separate text/image LAPs, identity init, null, compatibility."""

import pytest
import torch

from dla_core.dla import TARGETS, DLAConfig, DualLayerAggregation, target_spec
from dla_core.errors import DLACheckpointError, DLAInputError
from dla_core.features import MLLMFeatures
from dla_core.spec import MLLMSpec

LAYERS, WIDTH = 4, 32

# Per sample: token kinds left to right. t = instruction text, i = image, c = chat-template
# token (neither), p = padding (outside the attention mask).
LAYOUT = ["ctiiiittc", "ciicttcpp"]


def make_features(
    layout=LAYOUT, seed=0, layers=LAYERS, width=WIDTH, family="internvl", layer_indices=None, num_layers=None
):
    generator = torch.Generator().manual_seed(seed)
    tokens = len(layout[0])
    hidden = torch.randn(len(layout), layers, tokens, width, generator=generator)  # [batch, layers, tokens, width]

    def mask(kinds):
        return torch.tensor([[kind in kinds for kind in row] for row in layout])

    return MLLMFeatures(
        hidden_states=hidden,
        image_mask=mask("i"),
        text_mask=mask("t"),
        attention_mask=mask("tic"),
        family=family,
        num_layers=num_layers or layers,
        width=width,
        layer_indices=tuple(layer_indices if layer_indices is not None else range(layers)),
    )


def make_config(**overrides):
    fields = dict(
        mllm_family="internvl",
        num_layers=LAYERS,
        mllm_width=WIDTH,
        lap_width=16,
        lap_heads=4,
        lap_mlp_hidden=32,
        context_width=40,
        pooled_width=12,
    )
    fields.update(overrides)
    return DLAConfig(**fields)


def make_dla(seed=0, **overrides):
    torch.manual_seed(seed)
    return DualLayerAggregation(make_config(**overrides)).eval()


def positions(layout_row, kind):
    return [index for index, k in enumerate(layout_row) if k == kind]


def test_token_mask_counts_text_plus_image_tokens_per_sample():
    with torch.no_grad():
        out = make_dla()(make_features())
    assert out.tokens.shape == (2, 7, 40)  # sample 0: 3 text + 4 image; sample 1: 2 text + 2 image
    assert out.token_mask.tolist() == [[True] * 7, [True] * 4 + [False] * 3]
    assert torch.equal(out.tokens[1, 4:], torch.zeros(3, 40))


def test_text_tokens_come_first_then_image_tokens():
    dla = make_dla()
    features = make_features()
    per_token = features.hidden_states.permute(0, 2, 1, 3)  # [batch, tokens, layers, width]
    with torch.no_grad():
        out = dla(features)
        for sample, row in enumerate(LAYOUT):
            text = dla.output_proj(dla.lap_text(per_token[sample, positions(row, "t")]))
            image = dla.output_proj(dla.lap_image(per_token[sample, positions(row, "i")]))
            expected = torch.cat([text, image])
            assert torch.allclose(out.tokens[sample, : len(expected)], expected, atol=1e-6)


def test_image_first_fusion_puts_image_tokens_first():
    features = make_features()
    with torch.no_grad():
        text_first = make_dla(seed=3)(features)
        image_first = make_dla(seed=3, fuse="concat_image_first")(features)
    n_text, n_image = len(positions(LAYOUT[0], "t")), len(positions(LAYOUT[0], "i"))
    assert torch.equal(image_first.tokens[0, :n_image], text_first.tokens[0, n_text : n_text + n_image])
    assert torch.equal(image_first.tokens[0, n_image : n_image + n_text], text_first.tokens[0, :n_text])


def test_sequence_fusion_keeps_the_mllm_token_order():
    dla = make_dla(fuse="sequence")
    features = make_features()
    per_token = features.hidden_states.permute(0, 2, 1, 3)  # [batch, tokens, layers, width]
    with torch.no_grad():
        out = dla(features)
        for sample, row in enumerate(LAYOUT):
            expected = []
            for index, kind in enumerate(row):
                if kind in "ti":
                    lap = dla.lap_text if kind == "t" else dla.lap_image
                    expected.append(dla.output_proj(lap(per_token[sample, index : index + 1]))[0])
            expected = torch.stack(expected)  # [valid tokens, context_width]
            assert torch.allclose(out.tokens[sample, : len(expected)], expected, atol=1e-6)
    assert out.token_mask.tolist() == [[True] * 7, [True] * 4 + [False] * 3]


def test_sequence_fusion_is_a_permutation_of_text_first_fusion():
    features = make_features()
    with torch.no_grad():
        text_first = make_dla(seed=5)(features)
        sequence = make_dla(seed=5, fuse="sequence")(features)
    for sample, row in enumerate(LAYOUT):
        valid = [index for index, kind in enumerate(row) if kind in "ti"]
        concat_order = positions(row, "t") + positions(row, "i")
        # output slot of each valid position under text-first fusion, listed in sequence order
        slot = [concat_order.index(index) for index in valid]
        assert torch.equal(sequence.tokens[sample, : len(valid)], text_first.tokens[sample, slot])


@pytest.mark.parametrize("layer", [-1, 1])
def test_sequence_fusion_with_identity_init_returns_the_selected_layer_at_the_valid_positions_in_order(layer):
    dla = make_dla(
        init="identity",
        identity_layer=layer,
        lap_width=WIDTH,
        lap_input_norm=False,
        context_width=WIDTH,
        pooled_width=0,
        fuse="sequence",
    )
    features = make_features()
    with torch.no_grad():
        out = dla(features)
    for sample, row in enumerate(LAYOUT):
        valid = [index for index, kind in enumerate(row) if kind in "ti"]
        assert torch.equal(out.tokens[sample, : len(valid)], features.hidden_states[sample, layer, valid])
        assert torch.equal(out.tokens[sample, len(valid) :], torch.zeros(out.tokens.shape[1] - len(valid), WIDTH))
    assert out.pooled is None


def test_sequence_fusion_never_reads_padding_or_template_positions():
    dla = make_dla(fuse="sequence")
    features = make_features()
    changed = make_features()
    outside = ~(features.text_mask | features.image_mask)  # [batch, tokens]
    changed.hidden_states.permute(0, 2, 1, 3)[outside] = torch.randn(int(outside.sum()), LAYERS, WIDTH) * 100
    with torch.no_grad():
        before, after = dla(features), dla(changed)
    assert torch.equal(before.tokens, after.tokens)
    assert torch.equal(before.pooled, after.pooled)
    assert torch.equal(before.tokens[1, 4:], torch.zeros(3, 40))


def test_sequence_fusion_batched_equals_samples_run_alone():
    dla = make_dla(fuse="sequence")
    features = make_features()
    with torch.no_grad():
        batched = dla(features)
        for sample, row in enumerate(LAYOUT):
            alone_features = make_features([row])
            alone_features.hidden_states = features.hidden_states[sample : sample + 1]
            alone = dla(alone_features)
            valid = int(batched.token_mask[sample].sum())
            assert torch.allclose(batched.tokens[sample, :valid], alone.tokens[0], atol=1e-6)


def test_padding_and_template_positions_never_influence_any_output():
    dla = make_dla()
    features = make_features()
    changed = make_features()
    outside = ~(features.text_mask | features.image_mask)  # [batch, tokens]: padding + template tokens
    changed.hidden_states.permute(0, 2, 1, 3)[outside] = torch.randn(int(outside.sum()), LAYERS, WIDTH) * 100
    assert not torch.equal(changed.hidden_states, features.hidden_states)
    with torch.no_grad():
        before, after = dla(features), dla(changed)
    assert torch.equal(before.tokens, after.tokens)
    assert torch.equal(before.pooled, after.pooled)


def test_batched_samples_equal_samples_run_alone():
    dla = make_dla()
    features = make_features()
    with torch.no_grad():
        batched = dla(features)
        for sample, row in enumerate(LAYOUT):
            alone_features = make_features([row])
            alone_features.hidden_states = features.hidden_states[sample : sample + 1]
            alone = dla(alone_features)
            valid = int(batched.token_mask[sample].sum())
            assert torch.allclose(batched.tokens[sample, :valid], alone.tokens[0], atol=1e-6)
            assert torch.allclose(batched.pooled[sample], alone.pooled[0], atol=1e-6)


def test_image_lap_changes_only_image_token_outputs():
    dla = make_dla()
    features = make_features()
    with torch.no_grad():
        before = dla(features).tokens
        for parameter in dla.lap_image.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        after = dla(features).tokens
    n_text = [len(positions(row, "t")) for row in LAYOUT]
    n_all = [n + len(positions(row, "i")) for n, row in zip(n_text, LAYOUT)]
    for sample in range(2):
        assert torch.equal(before[sample, : n_text[sample]], after[sample, : n_text[sample]])
        assert not torch.allclose(
            before[sample, n_text[sample] : n_all[sample]], after[sample, n_text[sample] : n_all[sample]]
        )


def test_text_lap_changes_only_text_token_outputs():
    dla = make_dla()
    features = make_features()
    with torch.no_grad():
        before = dla(features).tokens
        for parameter in dla.lap_text.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        after = dla(features).tokens
    n_text = len(positions(LAYOUT[0], "t"))
    assert not torch.allclose(before[0, :n_text], after[0, :n_text])
    assert torch.equal(before[0, n_text:], after[0, n_text:])


def test_pooled_is_the_projected_masked_mean_of_the_output_tokens():
    dla = make_dla()
    with torch.no_grad():
        out = dla(make_features())
        mean = out.tokens[1, :4].mean(0)
        assert torch.allclose(out.pooled[1], dla.pooled_proj(dla.pooled_norm(mean)), atol=1e-6)


@pytest.mark.parametrize("layer", [-1, 0, 2])
def test_identity_init_reproduces_the_selected_layer_exactly(layer):
    # FLUX-like: context wider than the MLLM, so the selected layer fills the first dims, zeros after.
    dla = make_dla(init="identity", identity_layer=layer, lap_width=WIDTH, lap_input_norm=False)
    features = make_features()
    with torch.no_grad():
        out = dla(features)
    for sample, row in enumerate(LAYOUT):
        order = positions(row, "t") + positions(row, "i")
        expected = features.hidden_states[sample, layer, order]  # [valid tokens, width]
        assert torch.equal(out.tokens[sample, : len(order), :WIDTH], expected)
        assert torch.equal(out.tokens[sample, :, WIDTH:], torch.zeros(out.tokens.shape[1], 40 - WIDTH))


def test_identity_init_truncates_when_the_context_is_narrower_than_the_mllm():
    dla = make_dla(init="identity", lap_width=WIDTH, lap_input_norm=False, context_width=20)
    features = make_features()
    with torch.no_grad():
        out = dla(features)
    order = positions(LAYOUT[0], "t") + positions(LAYOUT[0], "i")
    assert torch.equal(out.tokens[0, : len(order)], features.hidden_states[0, -1, order, :20])


def test_identity_init_with_weighted_pool_is_also_exact():
    dla = make_dla(init="identity", lap_width=WIDTH, lap_input_norm=False, lap_pool="weighted")
    features = make_features()
    with torch.no_grad():
        out = dla(features)
    order = positions(LAYOUT[0], "t") + positions(LAYOUT[0], "i")
    assert torch.equal(out.tokens[0, : len(order), :WIDTH], features.hidden_states[0, -1, order])


def test_identity_init_needs_lap_width_equal_to_mllm_width():
    with pytest.raises(DLAInputError, match=r"needs lap_width equal to the MLLM width \(32, got 16\)"):
        make_config(init="identity", lap_input_norm=False)


def test_bad_identity_layer_is_refused():
    with pytest.raises(
        DLAInputError, match=r"identity_layer 4 is out of range: the DLA reads 4 layers \(use 0..3, or -1"
    ):
        make_config(init="identity", identity_layer=4, lap_width=WIDTH, lap_input_norm=False)


def test_null_conditioning_is_the_learned_null_sequence_for_every_sample():
    dla = make_dla(null_length=5)
    with torch.no_grad():
        dla.null_tokens.normal_()
        dla.null_pooled.normal_()
    null = dla.null_conditioning(3)
    assert null.tokens.shape == (3, 5, 40) and null.token_mask.all()
    assert all(torch.equal(null.tokens[i], dla.null_tokens) for i in range(3))
    assert all(torch.equal(null.pooled[i], dla.null_pooled) for i in range(3))


def test_null_conditioning_starts_as_zeros():
    null = make_dla().null_conditioning(1)
    assert torch.equal(null.tokens, torch.zeros(1, 16, 40)) and torch.equal(null.pooled, torch.zeros(1, 12))


def test_null_conditioning_carries_gradients_to_the_null_parameters():
    dla = make_dla()
    dla.null_conditioning(2).tokens.sum().backward()
    assert torch.equal(dla.null_tokens.grad, torch.full_like(dla.null_tokens, 2.0))


def test_drop_to_null_gives_dropped_samples_exactly_the_null_conditioning():
    dla = make_dla(null_length=9)
    with torch.no_grad():
        dla.null_tokens.normal_()
        dla.null_pooled.normal_()
        real = dla(make_features())  # 7 tokens
        mixed = dla.drop_to_null(real, torch.tensor([False, True]))
    null = dla.null_conditioning(1)
    assert mixed.tokens.shape == (2, 9, 40)
    assert torch.equal(mixed.tokens[0, :7], real.tokens[0]) and torch.equal(mixed.tokens[0, 7:], torch.zeros(2, 40))
    assert mixed.token_mask[0].tolist() == [True] * 7 + [False] * 2
    assert torch.equal(mixed.tokens[1], null.tokens[0]) and mixed.token_mask[1].all()
    assert torch.equal(mixed.pooled[0], real.pooled[0]) and torch.equal(mixed.pooled[1], null.pooled[0])


def test_target_without_pooled_width_gives_no_pooled_vector():
    dla = make_dla(target="qwen_image", pooled_width=0)
    with torch.no_grad():
        assert dla(make_features()).pooled is None
    assert dla.null_conditioning(2).pooled is None


def test_target_table_holds_flux_and_qwen_image_widths():
    assert (TARGETS["flux"].context_width, TARGETS["flux"].pooled_width) == (4096, 768)
    assert (TARGETS["qwen_image"].context_width, TARGETS["qwen_image"].pooled_width) == (3584, 0)


def test_unknown_target_is_refused_with_the_supported_list():
    supported = "flux, flux2, flux2_klein, flux2_klein_9b, krea2, qwen_image"
    with pytest.raises(DLAInputError, match=f"Unknown target 'sd3'. Supported targets: {supported}"):
        target_spec("sd3")


def test_features_with_a_subset_of_layers_are_used_when_they_hold_the_dla_layers():
    dla = make_dla(layer_indices=[1, 3])
    full = make_features()
    subset = make_features(layers=2, num_layers=LAYERS, layer_indices=[1, 3])
    subset.hidden_states = full.hidden_states[:, [1, 3]].clone()
    with torch.no_grad():
        assert torch.equal(dla(full).tokens, dla(subset).tokens)


def test_features_missing_a_layer_the_dla_reads_are_refused():
    dla = make_dla()
    subset = make_features(layers=2, num_layers=LAYERS, layer_indices=[0, 3])
    with pytest.raises(
        DLAInputError, match=r"reads MLLM layers \[0, 1, 2, 3\] but the features hold only layers \[0, 3\]"
    ):
        dla(subset)


def test_mismatched_layer_count_and_width_are_refused_with_the_exact_message():
    dla = make_dla()
    expected = (
        "DLA checkpoint expects 4 layers of width 32 (internvl); the connected MLLM gives 25 of width 1536 "
        "(qwen2_5_vl): "
        "load the DLA trained for this MLLM or run `python -m dla_core init-dla` for it"
    )
    with pytest.raises(DLACheckpointError) as info:
        dla.check_compatible(MLLMSpec("qwen2_5_vl", 25, 1536))
    assert str(info.value) == expected


def test_features_from_another_family_are_refused_even_with_the_same_shape():
    with pytest.raises(DLACheckpointError, match=r"gives 4 of width 32 \(qwen2_5_vl\)"):
        make_dla()(make_features(family="qwen2_5_vl"))


def test_sample_without_content_tokens_is_refused():
    with pytest.raises(DLAInputError, match=r"Sample\(s\) \[1\] .* hold no text and no image tokens"):
        make_dla()(make_features(["ctic", "ccpp"]))


def test_same_seed_gives_the_same_weights_and_outputs():
    features = make_features()
    with torch.no_grad():
        assert torch.equal(make_dla(seed=7)(features).tokens, make_dla(seed=7)(features).tokens)
        assert not torch.equal(make_dla(seed=7)(features).tokens, make_dla(seed=8)(features).tokens)


def test_config_round_trips_through_a_json_dict():
    import json

    config = make_config(layer_indices=[0, 2], fuse="concat_image_first", extra={"recipe": "stage1"})
    assert DLAConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_config_from_a_newer_pack_is_refused():
    data = make_config().to_dict()
    data["hypernetwork"] = True
    with pytest.raises(DLACheckpointError, match=r"unknown fields \['hypernetwork'\].*Update the pack"):
        DLAConfig.from_dict(data)


def test_bf16_dla_runs_on_fp32_features():
    dla = make_dla().to(torch.bfloat16)
    with torch.no_grad():
        out = dla(make_features())
    assert out.tokens.dtype == torch.bfloat16 and torch.isfinite(out.tokens.float()).all()
