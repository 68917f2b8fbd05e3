"""Bad MLLM folders and bad encode inputs raise DLAInputError with a message that says how to fix it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from dla_core.errors import DLAInputError
from dla_core.mllm import encode_joint, load_mllm

PROMPT = "the dog from the picture on a beach"


@pytest.fixture
def broken_copy(tiny_qwen25vl_dir, tmp_path):
    """A private copy of the tiny Qwen2.5-VL folder that a test may damage."""
    folder = tmp_path / "broken-qwen"
    shutil.copytree(tiny_qwen25vl_dir, folder)
    return folder


# ----------------------------------------------------------------------------- folders


def test_missing_folder_is_named_and_says_where_models_go(tmp_path):
    with pytest.raises(DLAInputError, match=r"does not exist.*models/mllm"):
        load_mllm(tmp_path / "no-such-model")


def test_folder_without_config_is_not_a_hf_model(broken_copy):
    (broken_copy / "config.json").unlink()
    with pytest.raises(DLAInputError, match=r"no config\.json"):
        load_mllm(broken_copy)


def test_unsupported_model_type_lists_the_supported_ones(broken_copy):
    config = json.loads((broken_copy / "config.json").read_text())
    config["model_type"] = "llava"
    (broken_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(DLAInputError, match=r"model_type 'llava'.*Supported: internvl, mistral3, qwen2_5_vl, qwen3_vl"):
        load_mllm(broken_copy)


def test_missing_weights_say_download_the_complete_folder(broken_copy):
    (broken_copy / "model.safetensors").unlink()
    with pytest.raises(DLAInputError, match=r"no weights \(model\.safetensors.*Download the complete"):
        load_mllm(broken_copy)


def test_pickled_weights_only_are_refused(broken_copy):
    (broken_copy / "model.safetensors").rename(broken_copy / "pytorch_model.bin")
    with pytest.raises(DLAInputError, match=r"only pickled weights \(pytorch_model\.bin\).*safetensors"):
        load_mllm(broken_copy)


def test_missing_shard_of_an_index_is_named(broken_copy):
    (broken_copy / "model.safetensors").rename(broken_copy / "model-00001-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    (broken_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(DLAInputError, match=r"model-00002-of-00002\.safetensors.*missing"):
        load_mllm(broken_copy)


def test_truncated_safetensors_is_reported_as_corrupt_with_its_path(broken_copy):
    weights = broken_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(DLAInputError, match=r"model\.safetensors' is corrupt or truncated.*download it again"):
        load_mllm(broken_copy)


def test_garbage_safetensors_header_is_reported_as_corrupt(broken_copy):
    (broken_copy / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(DLAInputError, match=r"corrupt or truncated"):
        load_mllm(broken_copy)


def test_missing_tokenizer_is_named(broken_copy):
    (broken_copy / "tokenizer.json").unlink()
    (broken_copy / "tokenizer_config.json").unlink()
    with pytest.raises(DLAInputError, match=r"no tokenizer \(tokenizer\.json"):
        load_mllm(broken_copy)


def test_missing_image_processor_is_named(broken_copy):
    # transformers 4.x writes preprocessor_config.json, transformers 5 an "image_processor" entry in
    # processor_config.json (see test_mllm_processor_layouts.py): remove whichever the folder has
    (broken_copy / "preprocessor_config.json").unlink(missing_ok=True)
    combined = broken_copy / "processor_config.json"
    if combined.is_file():
        config = json.loads(combined.read_text())
        config.pop("image_processor", None)
        combined.write_text(json.dumps(config))
    with pytest.raises(DLAInputError, match=r"no image processor \(preprocessor_config\.json\)"):
        load_mllm(broken_copy)


def test_unknown_dtype_lists_the_choices(tiny_qwen25vl_dir):
    with pytest.raises(DLAInputError, match=r"Unknown MLLM dtype 'float8'.*auto, bf16, fp16, fp32"):
        load_mllm(tiny_qwen25vl_dir, dtype="float8")


def test_auto_dtype_is_the_folders_own_dtype(tmp_path):
    from dla_tiny import build_tiny_qwen25vl

    folder = build_tiny_qwen25vl(tmp_path / "bf16-qwen", dtype=torch.bfloat16)
    loaded = load_mllm(folder)
    assert loaded.dtype == torch.bfloat16
    assert loaded.model.model.language_model.embed_tokens.weight.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- encode inputs


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt_asks_for_an_instruction(tiny_qwen25vl, make_reference, prompt):
    with pytest.raises(DLAInputError, match=r"prompt is empty\. Write an instruction"):
        encode_joint(tiny_qwen25vl, prompt, [make_reference()])


def test_empty_prompt_in_a_batch_is_numbered(tiny_qwen25vl, make_reference):
    with pytest.raises(DLAInputError, match=r"Prompt 2 is empty"):
        encode_joint(tiny_qwen25vl, [PROMPT, " "], [make_reference()])


@pytest.mark.parametrize("references", [None, [], [[]]])
def test_no_reference_asks_for_an_image(tiny_qwen25vl, references):
    with pytest.raises(DLAInputError, match=r"(No reference image given|no reference image)"):
        encode_joint(tiny_qwen25vl, PROMPT, references)


def test_grayscale_reference_says_convert_to_rgb(tiny_internvl):
    with pytest.raises(DLAInputError, match=r"grayscale.*RGB"):
        encode_joint(tiny_internvl, PROMPT, [torch.rand(1, 32, 32, 1)])


def test_rgba_reference_says_composite_on_a_background(tiny_internvl):
    with pytest.raises(DLAInputError, match=r"alpha channel.*background"):
        encode_joint(tiny_internvl, PROMPT, [Image.new("RGBA", (32, 32))])


def test_reference_lists_must_match_the_prompt_count(tiny_qwen25vl, make_reference):
    with pytest.raises(DLAInputError, match=r"3 reference lists for 2 prompts"):
        encode_joint(tiny_qwen25vl, [PROMPT, PROMPT], [[make_reference()]] * 3)


@pytest.mark.parametrize(
    "layers, message",
    [
        ([29], r"Layer index 29 is out of range.*0 = embeddings"),
        ([-5], r"Layer index -5 is out of range"),
        ([1, 1], r"names a layer twice"),
        ([], r"Empty layer selection"),
        (["last"], r"not an integer"),
    ],
)
def test_bad_layer_selection_is_explained(tiny_qwen25vl, make_reference, layers, message):
    with pytest.raises(DLAInputError, match=message):
        encode_joint(tiny_qwen25vl, PROMPT, [make_reference()], layers=layers)


def test_prompt_with_image_special_token_is_refused(tiny_qwen25vl, make_reference):
    with pytest.raises(DLAInputError, match=r"special token\(s\) <\|image_pad\|>.*inserted automatically"):
        encode_joint(tiny_qwen25vl, "a <|image_pad|> dog", [make_reference()])


@pytest.mark.parametrize("image_size", [0, 4, 100000, 3.5])
def test_bad_reference_resolution_is_refused(tiny_qwen25vl, make_reference, image_size):
    with pytest.raises(DLAInputError, match=r"Reference resolution .* is invalid"):
        encode_joint(tiny_qwen25vl, PROMPT, [make_reference()], image_size=image_size)


def test_rejected_inputs_run_no_forward(tiny_qwen25vl):
    before = tiny_qwen25vl.forward_calls
    with pytest.raises(DLAInputError):
        encode_joint(tiny_qwen25vl, PROMPT, [torch.rand(1, 32, 32, 4)])
    assert tiny_qwen25vl.forward_calls == before
