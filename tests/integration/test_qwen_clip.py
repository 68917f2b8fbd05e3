"""ComfyUI's own Qwen2.5-VL as the MLLM (DLAQwenCLIPJointEncode), in a real ComfyUI on tiny Qwen-Image-format weights.

The tiny text encoder goes through ComfyUI's real loader (``comfy.sd.load_clip``, type
qwen_image). ComfyUI fixes the 7B config for that type, so the tests pass ComfyUI's own
``qwen25_7b_model_config`` model option to shrink the language model; the vision tower is
ComfyUI's full-size one (see tests/lib/dla_tiny/qwen_image.py).
"""

from __future__ import annotations

import pytest
import torch
from dla_harness import pack_module

from dla_tiny.cache import cached_build
from dla_tiny.qwen_image import COMFY_TE_MODEL_OPTIONS_KEY, TINY_TE_CONFIG, build_tiny_qwen25vl_te

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPT = "Put the cat from Picture 1 on the sofa from Picture 2"


def _load_clip(path, clip_type: str = "QWEN_IMAGE", **config):
    import comfy.sd

    return comfy.sd.load_clip(
        [str(path)],
        clip_type=getattr(comfy.sd.CLIPType, clip_type),
        model_options={COMFY_TE_MODEL_OPTIONS_KEY: {**TINY_TE_CONFIG, **config}},
    )


def _image(width: int, height: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, height, width, 3, generator=generator)  # [batch, H, W, C] as ComfyUI's IMAGE


@pytest.fixture(scope="module")
def input_error(comfy):
    return pack_module("dla_core.errors").DLAInputError


@pytest.fixture(scope="module")
def pack(comfy):
    return pack_module("nodes.qwen_clip")


@pytest.fixture(scope="module")
def qwen_clip(comfy, tmp_path_factory):
    path = cached_build(build_tiny_qwen25vl_te, tmp_path_factory.mktemp("qwen-te"), seed=0)
    return _load_clip(path)


@pytest.fixture(scope="module")
def qwen_clip_text_only_fp8(comfy, tmp_path_factory):
    path = cached_build(
        build_tiny_qwen25vl_te,
        tmp_path_factory.mktemp("qwen-te-fp8"),
        seed=1,
        fp8_scaled=True,
        vision=False,
    )
    return path, _load_clip(path)


@pytest.fixture(scope="module")
def two_reference_run(pack, qwen_clip):
    """Native TextEncodeQwenImageEditPlus and the pack's node on the same prompt and two references."""
    from comfy_extras.nodes_qwen import TextEncodeQwenImageEditPlus

    first, second = _image(64, 48, 0), _image(40, 72, 1)
    native = TextEncodeQwenImageEditPlus.execute(qwen_clip, PROMPT, None, first, second, None).result[0]
    conditioning, features = pack.DLAQwenCLIPJointEncode.execute(qwen_clip, PROMPT, image1=first, image2=second).result
    return native, conditioning, features


def test_conditioning_equals_native_edit_plus_for_two_references(two_reference_run):
    native, conditioning, _ = two_reference_run
    assert len(conditioning) == len(native) == 1
    assert torch.equal(conditioning[0][0], native[0][0])
    assert conditioning[0][1].keys() == native[0][1].keys()


def test_features_hold_every_layer_and_the_last_equals_native_conditioning(two_reference_run):
    native, _, features = two_reference_run
    layers = TINY_TE_CONFIG["num_hidden_layers"] + 1
    assert features.hidden_states.shape[:2] == (1, layers)
    assert features.num_layers == layers and features.layer_indices == tuple(range(layers))
    assert features.width == TINY_TE_CONFIG["hidden_size"] and features.family == "qwen2_5_vl"
    assert torch.equal(features.hidden_states[:, -1], native[0][0])
    # Inner layers are genuinely different states, not copies of the last one.
    assert not torch.allclose(features.hidden_states[:, 1], features.hidden_states[:, -1])


def test_every_captured_layer_equals_comfyuis_own_output_of_that_layer(pack, qwen_clip):
    """Layer k of the capture == what this ComfyUI returns for ``clip_layer(k - 1)`` (raw hidden state, no norm).

    Newer ComfyUI's decoder layers write into their input buffer in place; a capture that keeps
    references instead of copies holds the last layer everywhere and fails here. The reference is
    the native node of the same ComfyUI, never numbers stored from another version.
    """
    from comfy_extras.nodes_qwen import TextEncodeQwenImageEditPlus

    reference = _image(64, 48, 0)
    _, features = pack.DLAQwenCLIPJointEncode.execute(qwen_clip, PROMPT, image1=reference).result
    decoder_layers = TINY_TE_CONFIG["num_hidden_layers"]
    for index in range(decoder_layers - 1):  # the last decoder layer's slot holds the final normed output
        clip = qwen_clip.clone()
        clip.clip_layer(index)
        native = TextEncodeQwenImageEditPlus.execute(clip, PROMPT, None, reference, None, None).result[0]
        assert torch.equal(features.hidden_states[:, index + 1], native[0][0]), f"decoder layer {index}"
    for index in range(decoder_layers):
        assert not torch.equal(features.hidden_states[:, index], features.hidden_states[:, index + 1]), index


def test_feature_masks_mark_each_reference_span_as_image_and_the_rest_as_text(two_reference_run):
    from dla_core.qwen_template import qwen_vl_image_tokens, scaled_size

    _, _, features = two_reference_run
    spans = features.extra["image_token_spans"]
    expected = [qwen_vl_image_tokens(*scaled_size(w, h, 384)) for w, h in ((64, 48), (40, 72))]
    assert [size for _, size in spans] == expected
    image = features.image_mask[0]
    assert int(image.sum()) == sum(expected)
    for start, size in spans:
        assert image[start : start + size].all()
    assert torch.equal(features.text_mask, ~features.image_mask)
    assert features.attention_mask.all()


def test_identity_dla_reproduces_native_qwen_image_conditioning(two_reference_run):
    dla_module = pack_module("dla_core.dla")
    init_dla = pack_module("dla_core.checkpoint").init_dla
    MLLMSpec = pack_module("dla_core.spec").MLLMSpec

    assert "sequence" in dla_module.FUSE_MODES
    native, _, features = two_reference_run
    spec = MLLMSpec(family=features.family, num_layers=features.num_layers, width=features.width, name="tiny")
    module = init_dla(
        spec,
        target="qwen_image",
        init="identity",
        identity_layer=-1,
        fuse="sequence",
        context_width=features.width,
        lap_pool="weighted",
    )
    with torch.no_grad():
        output = module(features)
    assert output.pooled is None and output.token_mask.all()
    assert torch.equal(output.tokens.to(native[0][0].dtype), native[0][0])


def test_dla_aggregate_node_with_identity_dla_emits_native_qwen_image_conditioning(comfy, two_reference_run):
    """DLALoader + DLAAggregate (the nodes a graph uses) give exactly native's tensor and native's keys.

    The only extra key is the DLA's "MLLM off" conditioning the staged sampler reads; Qwen-Image
    takes no distilled guidance, so none is added (native adds none either).
    """
    init_dla = pack_module("dla_core.checkpoint").init_dla
    save_dla = pack_module("dla_core.checkpoint").save_dla
    MLLMSpec = pack_module("dla_core.spec").MLLMSpec
    dla_nodes = pack_module("nodes.dla_nodes")
    mllm_off_key = pack_module("nodes.types").MLLM_OFF_KEY

    native, _, features = two_reference_run
    spec = MLLMSpec(family=features.family, num_layers=features.num_layers, width=features.width, name="tiny")
    module = init_dla(
        spec,
        target="qwen_image",
        init="identity",
        identity_layer=-1,
        fuse="sequence",
        context_width=features.width,
        lap_pool="weighted",
    )
    name = "tiny_identity_qwen_image.safetensors"
    save_dla(module, comfy.base_dir / "extra_dla" / name)  # extra_model_paths.yaml's dla folder
    handle = dla_nodes.DLALoader.execute(name).result[0]
    conditioning = dla_nodes.DLAAggregate.execute(handle, features, 2.5).result[0]
    assert len(conditioning) == 1
    assert torch.equal(conditioning[0][0], native[0][0])
    assert set(conditioning[0][1]) == set(native[0][1]) | {mllm_off_key}
    assert "guidance" not in conditioning[0][1]


def test_identity_dla_for_another_width_is_rejected_with_a_fix(two_reference_run):
    init_dla = pack_module("dla_core.checkpoint").init_dla
    DLACheckpointError = pack_module("dla_core.errors").DLACheckpointError
    MLLMSpec = pack_module("dla_core.spec").MLLMSpec

    _, _, features = two_reference_run
    full_size = MLLMSpec(family="qwen2_5_vl", num_layers=features.num_layers, width=3584, name="Qwen2.5-VL-7B")
    module = init_dla(full_size, target="qwen_image", lap_width=64, lap_heads=4, lap_mlp_hidden=64)
    with pytest.raises(DLACheckpointError, match="3584"):
        module.check_compatible(features)


def test_four_references_are_all_encoded_each_at_its_own_resolution(pack, qwen_clip):
    from dla_core.qwen_template import qwen_vl_image_tokens, scaled_size

    refs = [_image(56, 56, seed) for seed in range(4)]
    _, features = pack.encode_qwen_joint(qwen_clip, "Combine Picture 1 to Picture 4", refs, 56, "56, 56, 56, 112")
    sizes = [size for _, size in features.extra["image_token_spans"]]
    assert sizes == [qwen_vl_image_tokens(*scaled_size(56, 56, side)) for side in (56, 56, 56, 112)]
    assert sizes[3] > sizes[0]


def test_pictures_are_numbered_one_to_n_in_the_prompt(pack, qwen_clip, monkeypatch):
    seen = {}
    original = qwen_clip.tokenize

    def spy(text, **kwargs):
        seen["text"] = text
        return original(text, **kwargs)

    monkeypatch.setattr(qwen_clip, "tokenize", spy)
    pack.encode_qwen_joint(qwen_clip, "go", [_image(28, 28, s) for s in range(5)], 28)
    assert [seen["text"].count(f"Picture {k}:") for k in range(1, 6)] == [1] * 5
    assert "Picture 6" not in seen["text"] and seen["text"].endswith("go")


def test_fp8_scaled_text_only_encoder_matches_native_without_references(pack, qwen_clip_text_only_fp8):
    from comfy_extras.nodes_qwen import TextEncodeQwenImageEditPlus

    _, clip = qwen_clip_text_only_fp8
    native = TextEncodeQwenImageEditPlus.execute(clip, PROMPT, None, None, None, None).result[0]
    conditioning, features = pack.DLAQwenCLIPJointEncode.execute(clip, PROMPT).result
    assert torch.equal(conditioning[0][0], native[0][0])
    assert torch.equal(features.hidden_states[:, -1], native[0][0])
    assert not features.image_mask.any()


def test_qwen25vl_without_vision_tower_gives_a_clear_error(pack, input_error, qwen_clip_text_only_fp8):
    _, clip = qwen_clip_text_only_fp8
    with pytest.raises(input_error, match="vision tower"):
        pack.DLAQwenCLIPJointEncode.execute(clip, PROMPT, image1=_image(56, 56, 0))


def test_clip_of_another_type_gives_a_clear_error(pack, input_error, qwen_clip_text_only_fp8):
    path, _ = qwen_clip_text_only_fp8
    # HunyuanImage reads a layer 3 from the end: build one more layer than the tiny file holds
    # (only the type matters here).
    hunyuan = _load_clip(path, "HUNYUAN_IMAGE", num_hidden_layers=TINY_TE_CONFIG["num_hidden_layers"] + 1)
    with pytest.raises(input_error, match="qwen_image"):
        pack.DLAQwenCLIPJointEncode.execute(hunyuan, PROMPT)


def test_a_model_in_the_clip_socket_gives_a_clear_error(pack, input_error):
    with pytest.raises(input_error, match="not a ComfyUI CLIP"):
        pack.DLAQwenCLIPJointEncode.execute(object(), PROMPT)


def test_comfy_internals_the_layer_capture_reads_are_where_expected(pack, qwen_clip):
    """Fails loudly when ComfyUI reshapes its Qwen2.5-VL text encoder (the internals nodes/qwen_clip.py reads)."""
    modules = pack.comfy_qwen_modules(qwen_clip)
    assert len(modules["layers"]) == TINY_TE_CONFIG["num_hidden_layers"]
    assert modules["visual"] is not None
    for name in pack.VISION_PROBE_WEIGHTS:  # what the vision-tower check reads
        assert pack.holds_weights(modules["visual"].get_parameter(name)), name
    tokens = qwen_clip.tokenize("a red ball")
    ids = torch.tensor([[t for t, _ in tokens["qwen25_7b"][0]]])
    with pack.capture_all_layers(modules) as records:
        output = qwen_clip.encode_from_tokens(tokens, return_dict=True)
    assert len(records) == 1
    hidden = records[0]["hidden"]  # [1, layers, tokens, width]
    embedding = modules["transformer"].model.embed_tokens(ids, out_dtype=torch.float32)
    assert torch.equal(hidden[:, 0], embedding)
    assert torch.equal(hidden[:, -1, -output["cond"].shape[1] :], output["cond"])
