"""FLUX.2 targets (issue 10.4): widths, identity init that stacks the native layers, mismatch messages.

Pure ``dla_core`` (no ComfyUI). The ComfyUI side (capture from ComfyUI's own FLUX.2 text
encoders and bit identity against ``clip.encode_from_tokens_scheduled``) is in
tests/integration/test_flux2_clip.py.
"""

from __future__ import annotations

import pytest
import torch

from dla_core.checkpoint import init_dla, load_dla, save_dla
from dla_core.cli import main as cli_main
from dla_core.dla import TARGETS, DLAConfig
from dla_core.errors import DLACheckpointError, DLAInputError
from dla_core.features import MLLMFeatures
from dla_core.spec import MLLMSpec

NATIVE = {  # target -> (family, hidden states, width, layers), as ComfyUI's FLUX.2 text encoders
    "flux2": ("mistral3", 41, 5120, (10, 20, 30)),
    "flux2_klein": ("qwen3", 37, 2560, (9, 18, 27)),
    "flux2_klein_9b": ("qwen3", 37, 4096, (9, 18, 27)),
}
TINY_WIDTH = 8


def _features(family: str, num_layers: int, width: int, tokens: int = 5, seed: int = 0, layers=None) -> MLLMFeatures:
    generator = torch.Generator().manual_seed(seed)
    kept = tuple(range(num_layers)) if layers is None else tuple(layers)
    hidden = torch.randn(1, len(kept), tokens, width, generator=generator) * 30  # large values: exactness matters
    ones = torch.ones(1, tokens, dtype=torch.bool)
    return MLLMFeatures(
        hidden_states=hidden,
        image_mask=torch.zeros_like(ones),
        text_mask=ones,
        attention_mask=ones,
        family=family,
        num_layers=num_layers,
        width=width,
        layer_indices=kept,
    )


def _comfy_style_stack(hidden: torch.Tensor, layers) -> torch.Tensor:
    """What a FLUX.2 DiT reads: per token, the states of ``layers`` side by side ([batch, tokens, 3 * width])."""
    return torch.cat([hidden[:, layer] for layer in layers], dim=-1)


@pytest.mark.parametrize("target", sorted(NATIVE))
def test_flux2_targets_are_three_stacked_layers_of_their_native_encoder(target):
    family, num_layers, width, layers = NATIVE[target]
    spec = TARGETS[target]
    assert spec.context_width == 3 * width and spec.pooled_width == 0
    native = spec.native
    assert (native.family, native.num_layers, native.width, native.layers) == (family, num_layers, width, layers)
    assert spec.distilled_guidance is (target == "flux2")  # FLUX.2 [dev] reads guidance; [klein] has none


@pytest.mark.parametrize("target", sorted(NATIVE))
def test_identity_dla_reproduces_the_native_stack_bit_for_bit(target):
    family, num_layers, _, layers = NATIVE[target]
    spec = MLLMSpec(family, num_layers, TINY_WIDTH)
    dla = init_dla(spec, target=target, init="identity", context_width=3 * TINY_WIDTH)
    config = dla.config
    assert config.layer_indices == list(layers) and config.identity_layers == [0, 1, 2]
    assert config.fuse == "sequence" and config.lap_out_width == 3 * TINY_WIDTH and not config.lap_input_norm
    features = _features(family, num_layers, TINY_WIDTH, tokens=7)
    with torch.no_grad():
        output = dla(features)
    expected = _comfy_style_stack(features.hidden_states, layers)
    # ComfyUI's own formulation: stack(dim=1) -> movedim(1, 2) -> reshape, i.e. per token [l0 | l1 | l2].
    stacked = torch.stack([features.hidden_states[:, layer] for layer in layers], dim=1)
    assert torch.equal(stacked.movedim(1, 2).reshape(1, 7, -1), expected)
    assert output.pooled is None and output.token_mask.all()
    assert torch.equal(output.tokens, expected)
    # The identity is not a fluke of equal layers: each layer lands in its own third.
    assert not torch.equal(expected[..., :TINY_WIDTH], expected[..., TINY_WIDTH : 2 * TINY_WIDTH])


def test_identity_also_works_from_features_holding_only_a_prefix_of_the_layers(tmp_path):
    """ComfyUI's pruned FLUX.2 text encoder (30 decoder layers) gives hidden states 0..30 of the 41."""
    spec = MLLMSpec("mistral3", 41, TINY_WIDTH)
    path = save_dla(init_dla(spec, target="flux2", init="identity", context_width=24), tmp_path / "id.safetensors")
    dla = load_dla(path)
    features = _features("mistral3", 41, TINY_WIDTH, layers=range(31))
    with torch.no_grad():
        output = dla(features)
    assert torch.equal(output.tokens, _comfy_style_stack(features.hidden_states, (10, 20, 30)))


def test_full_size_flux2_identity_config_without_allocating():
    with torch.device("meta"):
        dla = init_dla(TARGETS["flux2"].native.spec(), target="flux2", init="identity", lap_blocks=0)
    config = dla.config
    assert (config.mllm_family, config.num_layers, config.mllm_width) == ("mistral3", 41, 5120)
    assert config.lap_width == 5120 and config.lap_output_width == config.context_width == 15360
    assert dla.output_proj.weight.shape == (15360, 15360)
    assert dla.lap_text.pool_fc.weight.shape == (15360, 3 * 5120)


def test_identity_for_flux2_refuses_another_family_and_a_width_that_cannot_stack_to_the_target():
    with pytest.raises(DLAInputError, match=r"reproduces its own text encoder.*mistral3.*--init random"):
        init_dla(MLLMSpec("qwen3", 37, 2560), target="flux2", init="identity")
    with pytest.raises(DLAInputError, match=r"takes 15360-wide tokens.*64 wide.*--init random"):
        init_dla(MLLMSpec("mistral3", 41, 64), target="flux2", init="identity")
    with pytest.raises(DLAInputError, match=r"only 20 hidden states"):
        init_dla(MLLMSpec("qwen3", 20, 8), target="flux2_klein", init="identity", context_width=24)


def test_random_flux2_dla_outputs_the_target_width():
    dla = init_dla(MLLMSpec("mistral3", 5, 16), target="flux2", lap_blocks=1)
    with torch.no_grad():
        output = dla(_features("mistral3", 5, 16))
    assert output.tokens.shape == (1, 5, 15360) and output.pooled is None


def test_klein_features_into_a_dev_dla_name_both_sides_and_the_fix():
    dla = init_dla(MLLMSpec("mistral3", 41, TINY_WIDTH), target="flux2", init="identity", context_width=24)
    klein = _features("qwen3", 37, 2560, tokens=2)
    with pytest.raises(DLACheckpointError) as info:
        dla(klein)
    message = str(info.value)
    assert "width 5120" not in message  # the tiny DLA's own width is named, not a guess
    assert "(qwen3)" in message and "target 'flux2'" in message
    assert "flux2_klein" in message and "init-dla --target flux2_klein" in message


def test_stacked_identity_config_is_validated():
    base = dict(mllm_family="mistral3", num_layers=41, mllm_width=8, lap_width=8, lap_heads=1, lap_input_norm=False)
    base.update(init="identity", layer_indices=[10, 20, 30], context_width=24)
    with pytest.raises(DLAInputError, match="must be 24 wide"):
        DLAConfig(**base, identity_layers=[0, 1, 2])
    with pytest.raises(DLAInputError, match="distinct positions"):
        DLAConfig(**base, identity_layers=[0, 0, 2], lap_out_width=24)
    with pytest.raises(DLAInputError, match="needs lap_pool 'flatten'"):
        DLAConfig(**base, identity_layers=[0, 1, 2], lap_out_width=24, lap_pool="weighted")
    assert DLAConfig(**base, identity_layers=[0, 1, 2], lap_out_width=24).lap_output_width == 24


def test_old_checkpoints_without_the_new_fields_still_load(tmp_path):
    dla = init_dla(MLLMSpec("internvl", 3, 16), target="flux", lap_blocks=1)
    data = dla.config.to_dict()
    for key in ("lap_out_width", "identity_layers"):
        data.pop(key)
    assert DLAConfig.from_dict(data) == dla.config


def test_cli_needs_mllm_except_for_flux2_targets(capsys):
    assert cli_main(["init-dla", "--target", "flux", "--out", "unused.safetensors"]) == 2
    assert "--mllm is required for target 'flux'" in capsys.readouterr().err


def test_cli_help_lists_the_flux2_targets(capsys):
    with pytest.raises(SystemExit):
        cli_main(["init-dla", "--help"])
    out = capsys.readouterr().out
    for target in NATIVE:
        assert target in out
