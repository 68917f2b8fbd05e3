"""Mistral-3 (``Mistral3ForConditionalGeneration``, FLUX.2 [dev]'s encoder with its Pixtral tower) in the MLLM loader.

A tiny random folder (real transformers classes, tiny config, byte-level tokenizer and a chat
template shaped like Mistral-Small-3's, built offline) read jointly: instruction + reference
image in one sequence, every layer captured, text / image masks checked against the
processor's own tokens. Runs on transformers 4.57 and 5.x.
"""

from __future__ import annotations

import pytest
import torch

from dla_core.checkpoint import init_dla
from dla_core.errors import DLAInputError
from dla_core.mllm import encode_joint, load_mllm
from dla_core.spec import read_mllm_spec

PROMPT = "the dog from the picture swimming in a lake"
DECODER_LAYERS = 3
WIDTH = 64


@pytest.fixture(scope="module")
def mistral3_dir(tmp_path_factory):
    from dla_tiny.mllm import build_tiny_mistral3

    return build_tiny_mistral3(
        tmp_path_factory.mktemp("mllm") / "tiny-mistral3",
        seed=0,
        hidden_size=WIDTH,
        num_layers=DECODER_LAYERS,
        longest_edge=112,
    )


@pytest.fixture(scope="module")
def mistral3(mistral3_dir):
    return load_mllm(mistral3_dir, dtype="fp32")


def _processor_inputs(mllm, prompt, images):
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
    text = mllm.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return mllm.processor(text=[text], images=images, return_tensors="pt")


def test_folder_reads_as_family_mistral3(mistral3_dir, mistral3):
    spec = read_mllm_spec(mistral3_dir)
    assert (spec.family, spec.num_layers, spec.width) == ("mistral3", DECODER_LAYERS + 1, WIDTH)
    assert type(mistral3.model).__name__ == "Mistral3ForConditionalGeneration"
    assert type(mistral3.processor).__name__ == "PixtralProcessor"


def test_joint_encode_returns_every_layer_equal_to_transformers_hidden_states(mistral3, make_reference):
    image = make_reference(60, 44)
    features = encode_joint(mistral3, PROMPT, [image])
    assert features.family == "mistral3" and features.num_layers == DECODER_LAYERS + 1
    assert features.hidden_states.shape[:2] == (1, DECODER_LAYERS + 1) and features.width == WIDTH
    with torch.no_grad():
        reference = mistral3.model(**_processor_inputs(mistral3, PROMPT, [image]), output_hidden_states=True)
    assert len(reference.hidden_states) == DECODER_LAYERS + 1
    for layer, expected in enumerate(reference.hidden_states):
        assert torch.equal(features.hidden_states[0, layer], expected[0]), f"layer {layer} differs"
    assert not torch.equal(features.hidden_states[0, 1], features.hidden_states[0, 2])


def test_masks_mark_the_image_tokens_and_the_instruction_and_nothing_else(mistral3, make_reference):
    image = make_reference(112, 84)
    features = encode_joint(mistral3, PROMPT, [image])
    ids = _processor_inputs(mistral3, PROMPT, [image])["input_ids"][0]
    tokenizer = mistral3.processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("[IMG]")
    # 112 x 84 px -> 4 x 3 blocks of 28 px (patch 14, merge 2), one [IMG] token each.
    assert int((ids == image_id).sum()) == 12
    assert torch.equal(features.image_mask[0], ids == image_id)
    assert not (features.image_mask & features.text_mask).any() and features.attention_mask.all()
    assert tokenizer.decode(ids[features.text_mask[0]]) == PROMPT
    for delimiter in ("[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]"):
        position = ids == tokenizer.convert_tokens_to_ids(delimiter)
        assert position.any() and not (features.image_mask[0] | features.text_mask[0])[position].any(), delimiter


def test_image_size_sets_the_longer_side(mistral3, make_reference):
    reference = make_reference(112, 112)
    assert encode_joint(mistral3, PROMPT, [reference]).extra["image_token_counts"] == [16]
    assert encode_joint(mistral3, PROMPT, [reference], image_size=56).extra["image_token_counts"] == [4]


def test_a_flux2_dla_reads_mistral3_features_and_identity_says_why_not_for_this_tiny_one(mistral3, make_reference):
    features = encode_joint(mistral3, PROMPT, [make_reference(60, 44)])
    dla = init_dla(mistral3.spec, target="flux2", lap_blocks=1, lap_mlp_hidden=32)
    with torch.no_grad():
        output = dla(features)
    assert output.tokens.shape == (1, int(features.text_mask.sum() + features.image_mask.sum()), 15360)
    with pytest.raises(DLAInputError, match=r"reads layers \[10, 20, 30\].*only 4 hidden states"):
        init_dla(mistral3.spec, target="flux2", init="identity")
