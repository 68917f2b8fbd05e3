"""Issue 11: non-finite numbers, values outside the offered list, unbounded sizes, and stopping the MLLM midway.

Each bad input raises :class:`DLAInputError` (or argparse's exit 2 for CLI flags) with a message naming the input
and the fix; the shared checks live in :mod:`dla_core.checks`.
"""

from __future__ import annotations

import math

import pytest
import torch

from dla_core.checks import (
    BATCH_ENV,
    DEFAULT_MAX_PROMPT_TOKENS,
    DEFAULT_MAX_REFERENCE_PIXELS,
    PROMPT_TOKENS_ENV,
    REFERENCE_PIXELS_ENV,
    REFERENCES_ENV,
    check_image_pixels,
    check_prompt_tokens,
    choice,
    finite,
    finite_float,
    whole,
)
from dla_core.cli import main as cli_main
from dla_core.dla import DLAConfig, DualLayerAggregation
from dla_core.errors import DLAInputError
from dla_core.eval import evaluate
from dla_core.features import MLLMFeatures
from dla_core.images import check_image_tensor, to_pil_list
from dla_core.mllm import encode_joint, forward_steps
from dla_core.pipeline import DLASubjectPipeline, load_reference_image

PROMPT = "the dog from the picture on a beach"


# ----------------------------------------------------------------------------- shared checks


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, float("nan")])
def test_finite_refuses_nan_and_inf_naming_the_input(value):
    with pytest.raises(DLAInputError, match=r"'cfg' is (nan|inf|-inf), not a finite number; give a number between 0"):
        finite("cfg", value, 0.0, 100.0)


@pytest.mark.parametrize("value, message", [(101.0, r"'cfg' is 101; give a number between 0 and 100"), ("2", "got")])
def test_finite_refuses_out_of_range_and_text(value, message):
    with pytest.raises(DLAInputError, match=message):
        finite("cfg", value, 0.0, 100.0)


def test_finite_and_whole_pass_good_values():
    assert finite("cfg", 3, 0.0, 100.0) == 3.0
    assert whole("steps", 4, 1, 10000) == 4
    assert whole("steps", 4.0, 1, 10000) == 4  # JSON may carry 4.0


@pytest.mark.parametrize("value", [0, 10001, 2.5, math.nan, True])
def test_whole_refuses_out_of_range_and_non_integers(value):
    with pytest.raises(DLAInputError, match=r"'steps' (is|must be)"):
        whole("steps", value, 1, 10000)


def test_choice_lists_the_offered_values():
    with pytest.raises(
        DLAInputError, match=r"'dtype' is 'fp8', which is not one of the offered values: 'auto', 'bf16'"
    ):
        choice("dtype", "fp8", ["auto", "bf16", "fp16", "fp32"])
    assert choice("dtype", "bf16", ["auto", "bf16"]) == "bf16"


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN"])
def test_cli_float_type_refuses_non_finite(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="not a finite number"):
        finite_float(text)
    assert finite_float("0.5") == 0.5


@pytest.mark.parametrize(
    "flag", ["--tau1", "--tau2", "--guidance", "--true-cfg", "--lora-scale", "--reference-megapixels"]
)
def test_generate_refuses_non_finite_float_flags(flag, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["generate", "--out", str(tmp_path / "x.png"), flag, "nan"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "not a finite number" in err


@pytest.mark.parametrize("batch_size", [0, -3])
def test_eval_refuses_a_batch_size_below_one(batch_size, tmp_path):
    with pytest.raises(DLAInputError, match=r"'batch_size \(--batch-size\)' is -?\d+; give a whole number between 1"):
        evaluate(tmp_path, tmp_path, dino=str(tmp_path), batch_size=batch_size)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"true_cfg_scale": math.nan}, r"'true_cfg_scale' is nan"),
        ({"true_cfg_scale": math.inf}, r"'true_cfg_scale' is inf"),
        ({"guidance_scale": math.nan}, r"'guidance' is nan"),
        ({"reference_megapixels": math.nan}, r"'reference_megapixels' is nan"),
    ],
)
def test_pipeline_refuses_non_finite_numbers(make_reference, overrides, message):
    args = dict(
        prompt=PROMPT,
        references=[make_reference()],
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=2.5,
        tau1=0.9,
        tau2=0.5,
    )
    args.update(overrides)
    with pytest.raises(DLAInputError, match=message):
        DLASubjectPipeline.check_inputs(**args)


# ----------------------------------------------------------------------------- MLLM sizes


def test_prompt_over_the_default_token_limit_names_the_limit_and_the_variable(tiny_internvl, make_reference):
    long_prompt = " ".join(["dog"] * (DEFAULT_MAX_PROMPT_TOKENS + 50))
    before = tiny_internvl.forward_calls
    with pytest.raises(DLAInputError, match=rf"tokens long, more than the limit of 1024 tokens.*{PROMPT_TOKENS_ENV}="):
        encode_joint(tiny_internvl, long_prompt, [make_reference()])
    assert tiny_internvl.forward_calls == before


def test_the_prompt_token_limit_is_raised_by_its_environment_variable(tiny_internvl, make_reference, monkeypatch):
    monkeypatch.setenv(PROMPT_TOKENS_ENV, "3")
    with pytest.raises(DLAInputError, match=r"more than the limit of 3 tokens"):
        encode_joint(tiny_internvl, PROMPT, [make_reference()])
    monkeypatch.setenv(PROMPT_TOKENS_ENV, "100000")
    long_prompt = " ".join(["dog"] * (DEFAULT_MAX_PROMPT_TOKENS + 50))
    assert encode_joint(tiny_internvl, long_prompt, [make_reference()]).hidden_states.shape[0] == 1


@pytest.mark.parametrize("raw", ["zero", "0", "-5"])
def test_a_bad_limit_variable_is_named(tiny_internvl, make_reference, monkeypatch, raw):
    monkeypatch.setenv(PROMPT_TOKENS_ENV, raw)
    with pytest.raises(DLAInputError, match=rf"{PROMPT_TOKENS_ENV}='{raw}' is not a positive whole number"):
        encode_joint(tiny_internvl, PROMPT, [make_reference()])


def test_too_many_references_name_the_limit_and_the_variable(tiny_internvl, make_reference, monkeypatch):
    with pytest.raises(DLAInputError, match=rf"Reference images: 17, more than the limit of 16.*{REFERENCES_ENV}=32"):
        encode_joint(tiny_internvl, PROMPT, [make_reference(seed=i) for i in range(17)])
    monkeypatch.setenv(REFERENCES_ENV, "2")
    with pytest.raises(DLAInputError, match=r"Reference images of prompt 2: 3, more than the limit of 2"):
        encode_joint(tiny_internvl, [PROMPT, PROMPT], [[make_reference()], [make_reference()] * 3])


def test_too_many_prompts_in_a_batch_name_the_limit_and_the_variable(tiny_internvl, make_reference, monkeypatch):
    monkeypatch.setenv(BATCH_ENV, "2")
    with pytest.raises(DLAInputError, match=rf"Prompts in one batch: 3, more than the limit of 2.*{BATCH_ENV}="):
        encode_joint(tiny_internvl, [PROMPT] * 3, [make_reference()])


# ----------------------------------------------------------------------------- progress and stopping


@pytest.mark.parametrize("references, prompts", [(3, 1), (1, 2)])
def test_progress_steps_once_per_reference_and_per_layer(tiny_internvl, make_reference, references, prompts):
    calls = []
    refs = [make_reference(seed=i) for i in range(references)]
    prompt = PROMPT if prompts == 1 else [PROMPT] * prompts
    encode_joint(tiny_internvl, prompt, refs, progress=lambda done, total: calls.append((done, total)))
    layers = forward_steps(tiny_internvl, tuple(range(tiny_internvl.spec.num_layers)))
    total = references * prompts + layers
    assert calls == [(step, total) for step in range(1, total + 1)]


class _Stop(Exception):
    pass


def test_an_exception_from_progress_stops_the_forward_at_that_layer(tiny_internvl, make_reference):
    """What ComfyUI's interrupt does through the node's callback: the forward stops at the next layer."""
    decoders = tiny_internvl.model.model.language_model.layers
    ran = []
    handles = [layer.register_forward_hook(lambda *args, i=i: ran.append(i)) for i, layer in enumerate(decoders)]

    def progress(done, total):
        if done == 2:  # the reference is prepared (1), decoder layer 0 is starting (2)
            raise _Stop

    try:
        with pytest.raises(_Stop):
            encode_joint(tiny_internvl, PROMPT, [make_reference()], progress=progress)
    finally:
        for handle in handles:
            handle.remove()
    assert ran == []
    assert encode_joint(tiny_internvl, PROMPT, [make_reference()]).hidden_states.isfinite().all()


# ----------------------------------------------------------------------------- prompt length (shared message)


def test_the_shared_prompt_check_names_the_count_the_limit_and_the_variable(monkeypatch):
    check_prompt_tokens(DEFAULT_MAX_PROMPT_TOKENS)  # at the limit: fine
    with pytest.raises(
        DLAInputError,
        match=rf"^The prompt is 1025 tokens long, more than the limit of 1024 tokens\. Shorten the instruction.*"
        rf"set the environment variable {PROMPT_TOKENS_ENV} \(e\.g\. {PROMPT_TOKENS_ENV}=2048\) before starting",
    ):
        check_prompt_tokens(DEFAULT_MAX_PROMPT_TOKENS + 1)
    monkeypatch.setenv(PROMPT_TOKENS_ENV, "4096")
    check_prompt_tokens(DEFAULT_MAX_PROMPT_TOKENS + 1)


# ----------------------------------------------------------------------------- raw reference image size

BIG_MESSAGE = (
    r"is 40x30 px \(0\.0 megapixels\), more than the limit of 1000 pixels per reference image.*"
    r"Scale it down first \(in ComfyUI: an 'Upscale Image' \(ImageScale\).*"
    rf"set the environment variable {REFERENCE_PIXELS_ENV} \(e\.g\. {REFERENCE_PIXELS_ENV}=1200\) before starting"
)


def test_the_reference_pixel_limit_defaults_to_8192_squared_and_names_the_fix():
    assert DEFAULT_MAX_REFERENCE_PIXELS == 8192 * 8192
    check_image_pixels("reference image 1", 8192, 8192)  # at the limit: fine
    with pytest.raises(
        DLAInputError,
        match=r"^reference image 2 is 8193x8192 px \(67\.1 megapixels\), more than the limit of 67108864 pixels per "
        r"reference image \(67\.1 megapixels, e\.g\. 8192x8192\)\. Scale it down first.*"
        rf"{REFERENCE_PIXELS_ENV}=67117056\)",
    ):
        check_image_pixels("reference image 2", 8193, 8192)


def test_the_reference_pixel_limit_is_raised_by_its_environment_variable(monkeypatch):
    monkeypatch.setenv(REFERENCE_PIXELS_ENV, "1000")
    with pytest.raises(DLAInputError, match="reference image 1 " + BIG_MESSAGE):
        check_image_pixels("reference image 1", 40, 30)
    monkeypatch.setenv(REFERENCE_PIXELS_ENV, "1200")
    check_image_pixels("reference image 1", 40, 30)
    monkeypatch.setenv(REFERENCE_PIXELS_ENV, "big")
    with pytest.raises(DLAInputError, match=rf"{REFERENCE_PIXELS_ENV}='big' is not a positive whole number"):
        check_image_pixels("reference image 1", 40, 30)


def test_every_image_path_of_the_pack_applies_the_pixel_limit(monkeypatch, make_reference):
    """IMAGE tensors (every node's references) and PIL images (pipeline, CLI) go through the same check."""
    monkeypatch.setenv(REFERENCE_PIXELS_ENV, "1000")
    with pytest.raises(DLAInputError, match="reference image input 2 " + BIG_MESSAGE):
        check_image_tensor(torch.rand(1, 30, 40, 3), "reference image input 2")
    with pytest.raises(DLAInputError, match="reference image " + BIG_MESSAGE):
        to_pil_list(make_reference(width=40, height=30))
    assert len(to_pil_list(make_reference(width=20, height=30))) == 1  # 600 pixels


def test_an_mllm_reference_over_the_pixel_limit_stops_before_the_forward(tiny_internvl, make_reference, monkeypatch):
    monkeypatch.setenv(REFERENCE_PIXELS_ENV, "1000")
    before = tiny_internvl.forward_calls
    with pytest.raises(DLAInputError, match=BIG_MESSAGE):
        encode_joint(tiny_internvl, PROMPT, [make_reference(width=20, height=30), make_reference(width=40, height=30)])
    assert tiny_internvl.forward_calls == before
    monkeypatch.delenv(REFERENCE_PIXELS_ENV)
    assert encode_joint(tiny_internvl, PROMPT, [make_reference(width=40, height=30)]).hidden_states.isfinite().all()


def test_a_reference_file_over_the_pixel_limit_is_refused_from_its_header(monkeypatch, make_reference, tmp_path):
    path = tmp_path / "big.png"
    make_reference(width=40, height=30).save(path)
    monkeypatch.setenv(REFERENCE_PIXELS_ENV, "1000")
    decoded = []
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", lambda self: decoded.append(self) or None)
    with pytest.raises(DLAInputError, match=rf"Reference image {path} " + BIG_MESSAGE):
        load_reference_image(path)
    assert decoded == []  # refused before the pixels were decoded


def test_generate_refuses_a_reference_over_the_pixel_limit_then_runs(monkeypatch, make_reference, tmp_path, capsys):
    path = tmp_path / "big.png"
    make_reference(width=40, height=30).save(path)
    monkeypatch.setenv(REFERENCE_PIXELS_ENV, "1000")
    out = tmp_path / "out.png"
    assert cli_main(["generate", "--out", str(out), "--reference", str(path), "--prompt", PROMPT]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Reference image {path} is 40x30 px") and f"{REFERENCE_PIXELS_ENV}=1200" in err
    assert not out.exists()


def test_eval_refuses_a_reference_over_the_pixel_limit_before_loading_models(monkeypatch, make_reference, tmp_path):
    generations, references = tmp_path / "gen", tmp_path / "refs"
    (generations / "dog").mkdir(parents=True)
    (references / "dog").mkdir(parents=True)
    make_reference(width=20, height=30).save(generations / "dog" / "a.png")
    make_reference(width=40, height=30).save(references / "dog" / "ref.png")
    monkeypatch.setenv(REFERENCE_PIXELS_ENV, "1000")
    # --dino names a folder that holds no model: the size check must come first
    with pytest.raises(DLAInputError, match=rf"Reference image {references / 'dog' / 'ref.png'} " + BIG_MESSAGE):
        evaluate(generations, references, dino=str(tmp_path / "no-model"))


# ----------------------------------------------------------------------------- stopping the DLA midway


def _tiny_dla() -> DualLayerAggregation:
    torch.manual_seed(0)
    config = DLAConfig(
        mllm_family="internvl",
        num_layers=4,
        mllm_width=32,
        lap_width=16,
        lap_heads=4,
        lap_mlp_hidden=32,
        context_width=40,
        pooled_width=12,
        lap_blocks=3,
    )
    return DualLayerAggregation(config).eval()


def _features() -> MLLMFeatures:
    hidden = torch.randn(1, 4, 6, 32, generator=torch.Generator().manual_seed(0))
    image = torch.tensor([[False, True, True, False, False, False]])
    return MLLMFeatures(
        hidden_states=hidden,
        image_mask=image,
        text_mask=~image,
        attention_mask=torch.ones_like(image),
        family="internvl",
        num_layers=4,
        width=32,
        layer_indices=(0, 1, 2, 3),
    )


def test_the_dla_forward_calls_check_interrupt_before_each_lap_block_and_stops_there():
    dla = _tiny_dla()
    blocks = [*dla.lap_text.blocks, *dla.lap_image.blocks]
    ran = []
    handles = [block.register_forward_hook(lambda *args, block=block: ran.append(block)) for block in blocks]

    def check_interrupt():
        if ran:  # the first block has run: "Cancel" was pressed
            raise _Stop

    try:
        with pytest.raises(_Stop):
            dla(_features(), check_interrupt=check_interrupt)
        assert len(ran) == 1  # the other 5 blocks never ran
        ran.clear()
        calls = []
        output = dla(_features(), check_interrupt=lambda: calls.append(1))
    finally:
        for handle in handles:
            handle.remove()
    assert len(ran) == 6 and len(calls) == 2 * (3 + 1)  # before each block and each pooling map, per LAP
    assert torch.equal(output.tokens, dla(_features()).tokens)  # the hook point changes nothing
