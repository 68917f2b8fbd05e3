"""Joint MLLM encoding: layer convention, masks, batching, layer subsets, dtype."""

from __future__ import annotations

import pytest
import torch

from dla_core.mllm import encode_joint, load_mllm

PROMPT = "the dog from the picture swimming in a lake"


@pytest.fixture(params=["internvl", "qwen2_5_vl"])
def mllm(request, tiny_internvl, tiny_qwen25vl):
    return {"internvl": tiny_internvl, "qwen2_5_vl": tiny_qwen25vl}[request.param]


def _hf_inputs(mllm, features_prompt, images):
    """The processor's own inputs for one sample, built independently of encode_joint."""
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": features_prompt}]
    if len(images) > 1:
        content = []
        for index in range(len(images)):
            content += [{"type": "text", "text": f"Picture {index + 1}: "}, {"type": "image"}]
        content.append({"type": "text", "text": features_prompt})
    text = mllm.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return mllm.processor(text=[text], images=images, return_tensors="pt")


def _image_features(output) -> torch.Tensor:
    """``get_image_features``' merged image tokens: transformers 4.x returns them (a tuple per image for
    Qwen-VL), transformers 5 a model output whose ``pooler_output`` holds the same."""
    features = output if isinstance(output, (torch.Tensor, tuple, list)) else output.pooler_output
    return torch.cat(features) if isinstance(features, (tuple, list)) else features


def test_layer_count_is_embedding_plus_each_decoder_layer(mllm, make_reference):
    features = encode_joint(mllm, PROMPT, [make_reference()])
    decoders = len(mllm.model.model.language_model.layers)
    assert features.hidden_states.shape[1] == decoders + 1 == mllm.spec.num_layers == features.num_layers
    assert features.layer_indices == tuple(range(decoders + 1))
    assert features.hidden_states.shape[-1] == mllm.spec.width == features.width


def test_all_layers_equal_transformers_output_hidden_states(mllm, make_reference):
    image = make_reference()
    features = encode_joint(mllm, PROMPT, [image])
    with torch.no_grad():
        reference = mllm.model(**_hf_inputs(mllm, PROMPT, [image]), output_hidden_states=True).hidden_states
    assert len(reference) == features.hidden_states.shape[1]
    for layer, expected in enumerate(reference):
        assert torch.equal(features.hidden_states[0, layer], expected[0]), f"layer {layer} differs"


def _deepstack_features(backbone, inputs) -> list[torch.Tensor]:
    """Qwen3-VL's deepstack visual features, one [image tokens, width] tensor per deepstack layer.

    transformers 4.x ``get_image_features`` returns ``(image_embeds, deepstack_embeds)``; transformers 5 a
    model output with ``deepstack_features`` (per deepstack layer, a tuple with one tensor per image).
    """
    output = backbone.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    layers = output[1] if isinstance(output, tuple) else output.deepstack_features
    return [torch.cat(layer) if isinstance(layer, (tuple, list)) else layer for layer in layers]


def test_qwen3vl_layers_equal_backbone_output_hidden_states(tiny_qwen3vl_dir, make_reference):
    import transformers

    mllm = load_mllm(tiny_qwen3vl_dir, dtype="fp32")
    image = make_reference()
    features = encode_joint(mllm, PROMPT, [image])
    inputs = _hf_inputs(mllm, PROMPT, [image])
    backbone = mllm.model.model
    with torch.no_grad():
        reference = list(backbone(**inputs, output_hidden_states=True).hidden_states)
        deepstack = _deepstack_features(backbone, inputs)
    assert len(reference) == features.hidden_states.shape[1]
    assert len(deepstack) == 1 and deepstack[0].shape == (int(features.image_mask.sum()), mllm.spec.width)
    # Layer k is what decoder layer k reads: decoder k-1's output plus the deepstack features Qwen3-VL adds to the
    # image tokens after the first decoders. transformers 4.x reported exactly that (it added them in place into
    # the recorded tensor); transformers 5 records decoder k-1's output before the addition, so add them here.
    if int(transformers.__version__.split(".")[0]) >= 5:
        image_positions = features.image_mask[0]
        for index, visual in enumerate(deepstack):
            layer = reference[index + 1].clone()
            layer[0, image_positions, :] = layer[0, image_positions, :] + visual
            reference[index + 1] = layer
    for layer, expected in enumerate(reference):
        assert torch.equal(features.hidden_states[0, layer], expected[0]), f"layer {layer} differs"


def test_layer0_is_token_embeddings_with_image_features_merged(mllm, make_reference):
    image = make_reference()
    features = encode_joint(mllm, PROMPT, [image])
    inputs = _hf_inputs(mllm, PROMPT, [image])
    backbone = mllm.model.model
    with torch.no_grad():
        embeddings = backbone.get_input_embeddings()(inputs["input_ids"])  # [1, tokens, width]
        if mllm.family == "internvl":
            image_features = _image_features(
                backbone.get_image_features(
                    pixel_values=inputs["pixel_values"],
                    vision_feature_layer=mllm.model.config.vision_feature_layer,
                    vision_feature_select_strategy=mllm.model.config.vision_feature_select_strategy,
                )
            )
        else:
            image_features = _image_features(
                backbone.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
            )
    image_positions = features.image_mask[0]
    expected = embeddings[0].clone()
    expected[image_positions] = image_features.reshape(-1, expected.shape[-1])
    assert torch.equal(features.hidden_states[0, 0], expected)
    assert not torch.equal(features.hidden_states[0, 0][image_positions], embeddings[0][image_positions])


def test_last_layer_is_final_norm_output(mllm, make_reference):
    image = make_reference()
    features = encode_joint(mllm, PROMPT, [image])
    with torch.no_grad():
        last = mllm.model.model(**_hf_inputs(mllm, PROMPT, [image]), use_cache=False).last_hidden_state
    assert torch.equal(features.hidden_states[0, -1], last[0])


def test_masks_are_disjoint_inside_attention_and_leave_template_tokens_out(mllm, make_reference):
    features = encode_joint(mllm, [PROMPT, "a cat"], [[make_reference()], [make_reference(seed=1)] * 2])
    assert not (features.image_mask & features.text_mask).any()
    assert not ((features.image_mask | features.text_mask) & ~features.attention_mask).any()
    template = features.attention_mask & ~features.image_mask & ~features.text_mask
    assert template.sum(dim=1).min() > 0  # role markers etc. are in neither mask


@pytest.mark.parametrize("references", [1, 2])
def test_text_mask_decodes_to_the_prompt_exactly(mllm, make_reference, references):
    images = [make_reference(seed=i) for i in range(references)]
    features = encode_joint(mllm, "  " + PROMPT + "\n", images)
    inputs = _hf_inputs(mllm, PROMPT, images)  # the stripped prompt gives the same sequence
    assert inputs["input_ids"].shape[1] == features.text_mask.shape[1]
    ids = inputs["input_ids"][0][features.text_mask[0]]
    assert mllm.processor.tokenizer.decode(ids) == PROMPT


def test_image_token_count_equals_what_the_processor_inserted(mllm, make_reference):
    images = [make_reference(60, 44, seed=0), make_reference(90, 30, seed=1)]
    features = encode_joint(mllm, PROMPT, images)
    inputs = _hf_inputs(mllm, PROMPT, images)
    if mllm.family == "internvl":
        inserted = inputs["pixel_values"].shape[0] * mllm.processor.image_seq_length  # tiles x tokens per tile
    else:
        merge = mllm.processor.image_processor.merge_size
        inserted = int(inputs["image_grid_thw"].prod(dim=-1).sum()) // merge**2
    assert int(features.image_mask.sum()) == inserted == features.extra["image_token_counts"][0]


def test_several_references_are_tagged_picture_k_outside_both_masks(mllm, make_reference):
    features = encode_joint(mllm, PROMPT, [make_reference(seed=0), make_reference(seed=1)])
    inputs = _hf_inputs(mllm, PROMPT, [make_reference(seed=0), make_reference(seed=1)])
    template = features.attention_mask[0] & ~features.image_mask[0] & ~features.text_mask[0]
    template_text = mllm.processor.tokenizer.decode(inputs["input_ids"][0][template])
    assert "Picture 1: " in template_text and "Picture 2: " in template_text


def test_batch_with_padding_equals_each_sample_alone(mllm, make_reference):
    prompts = [PROMPT, "a cat"]
    references = [[make_reference(seed=0)], [make_reference(seed=1), make_reference(80, 40, seed=2)]]
    batch = encode_joint(mllm, prompts, references)
    assert not batch.attention_mask.all()  # the shorter sample really is padded
    for index, (prompt, refs) in enumerate(zip(prompts, references)):
        single = encode_joint(mllm, prompt, refs)
        length = single.hidden_states.shape[2]
        assert torch.equal(batch.attention_mask[index, :length], single.attention_mask[0])
        assert not batch.attention_mask[index, length:].any()
        assert torch.equal(batch.text_mask[index, :length], single.text_mask[0])
        assert torch.equal(batch.image_mask[index, :length], single.image_mask[0])
        torch.testing.assert_close(batch.hidden_states[index, :, :length], single.hidden_states[0], rtol=0, atol=1e-5)


def test_flat_reference_list_is_shared_by_every_prompt(mllm, make_reference):
    image = make_reference()
    shared = encode_joint(mllm, [PROMPT, PROMPT], [image])
    torch.testing.assert_close(shared.hidden_states[0], shared.hidden_states[1], rtol=0, atol=1e-5)
    assert shared.extra["references_per_prompt"] == [1, 1]


def test_image_tensor_batch_counts_as_several_references(mllm, make_reference):
    import numpy as np

    images = [make_reference(seed=0), make_reference(seed=1)]
    tensor = torch.from_numpy(np.stack([np.asarray(im) for im in images])).float() / 255  # [2, H, W, 3]
    from_tensor = encode_joint(mllm, PROMPT, [tensor])
    from_pils = encode_joint(mllm, PROMPT, images)
    assert from_tensor.extra["references_per_prompt"] == [2]
    assert torch.equal(from_tensor.hidden_states, from_pils.hidden_states)


def test_layer_subset_equals_slices_of_the_full_capture_in_given_order(mllm, make_reference):
    image = make_reference()
    full = encode_joint(mllm, PROMPT, [image])
    subset = encode_joint(mllm, PROMPT, [image], layers=[-1, 0, 2])
    last = mllm.spec.num_layers - 1
    assert subset.layer_indices == (last, 0, 2)
    assert torch.equal(subset.hidden_states, full.hidden_states[:, [last, 0, 2]])
    assert subset.num_layers == full.num_layers


def test_subset_of_early_layers_stops_the_forward_before_later_decoders(mllm, make_reference):
    later_calls = []
    last_decoder = mllm.model.model.language_model.layers[-1]
    handle = last_decoder.register_forward_hook(lambda *args: later_calls.append(1))
    try:
        early = encode_joint(mllm, PROMPT, [make_reference()], layers=[1])
        assert later_calls == []
        encode_joint(mllm, PROMPT, [make_reference()])
        assert later_calls == [1]
    finally:
        handle.remove()
    full = encode_joint(mllm, PROMPT, [make_reference()])
    assert torch.equal(early.hidden_states[:, 0], full.hidden_states[:, 1])


def test_encoding_is_deterministic(mllm, make_reference):
    first = encode_joint(mllm, PROMPT, [make_reference()])
    second = encode_joint(mllm, PROMPT, [make_reference()])
    assert torch.equal(first.hidden_states, second.hidden_states)
    assert torch.equal(first.text_mask, second.text_mask)


def test_each_encode_counts_one_forward(mllm, make_reference):
    before = mllm.forward_calls
    encode_joint(mllm, [PROMPT, "a cat"], [make_reference()])
    assert mllm.forward_calls == before + 1


def test_metadata_names_family_model_and_prompts(mllm, make_reference):
    features = encode_joint(mllm, PROMPT, [make_reference()])
    assert features.family == mllm.spec.family
    assert features.model_name == mllm.name
    assert features.prompts == (PROMPT,)
    assert features.hidden_states.dtype == torch.float32


def test_bf16_model_captures_in_bf16_exactly_as_transformers(tiny_qwen25vl_dir, make_reference):
    mllm = load_mllm(tiny_qwen25vl_dir, dtype="bf16")
    image = make_reference()
    features = encode_joint(mllm, PROMPT, [image])
    assert mllm.dtype == torch.bfloat16 and features.hidden_states.dtype == torch.bfloat16
    with torch.no_grad():
        reference = mllm.model(**_hf_inputs(mllm, PROMPT, [image]), output_hidden_states=True).hidden_states
    for layer, expected in enumerate(reference):
        assert torch.equal(features.hidden_states[0, layer], expected[0])


def test_qwen_image_size_sets_the_image_token_count(tiny_qwen25vl, make_reference):
    small = encode_joint(tiny_qwen25vl, PROMPT, [make_reference(60, 60)], image_size=28)
    large = encode_joint(tiny_qwen25vl, PROMPT, [make_reference(60, 60)], image_size=56)
    assert small.extra["image_token_counts"] == [1]  # 28x28 px = one 28 px block
    assert large.extra["image_token_counts"] == [4]


def test_internvl_image_size_sets_the_tile_count(tiny_internvl, make_reference):
    per_tile = tiny_internvl.processor.image_seq_length
    one_tile = encode_joint(tiny_internvl, PROMPT, [make_reference(200, 200)], image_size=56)
    four_tiles = encode_joint(tiny_internvl, PROMPT, [make_reference(200, 200)], image_size=112)
    assert one_tile.extra["image_token_counts"] == [per_tile]
    assert four_tiles.extra["image_token_counts"] == [5 * per_tile]  # 2x2 tiles + thumbnail
