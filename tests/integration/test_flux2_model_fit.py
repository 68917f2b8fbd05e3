"""A DLA made for another DiT is one clear node error (issue 10.4): FLUX.2 DLA with FLUX.1, FLUX.1 DLA with FLUX.2.

Without the check the width mismatch surfaces only inside sampling, as ComfyUI's "mat1 and
mat2 shapes cannot be multiplied (... x 15360 and 4096 x ...)". ``DLAAggregate`` checks the DLA
against its optional ``model`` input before running; ``check_conditioning_fits_model`` does
the same for a conditioning. Real ComfyUI models (tiny FLUX.1 from the tiny tree, tiny FLUX.2
[dev] and [klein] DiTs where this ComfyUI has FLUX.2).
"""

from __future__ import annotations

import pytest
import torch
from dla_harness import pack_module

pytestmark = pytest.mark.integration

NEEDS_NEWER = r"^FLUX\.2 needs ComfyUI >= 0\.3\.72 .*this ComfyUI \([0-9][^ ]*\) has no FLUX\.2\. Update ComfyUI"


def _features(family: str, num_layers: int, width: int, tokens: int = 4):
    MLLMFeatures = pack_module("dla_core.features").MLLMFeatures
    ones = torch.ones(1, tokens, dtype=torch.bool)
    return MLLMFeatures(
        hidden_states=torch.randn(1, num_layers, tokens, width, generator=torch.Generator().manual_seed(0)),
        image_mask=torch.zeros_like(ones),
        text_mask=ones,
        attention_mask=ones,
        family=family,
        num_layers=num_layers,
        width=width,
        layer_indices=tuple(range(num_layers)),
    )


def _handle(target: str, family: str, num_layers: int, width: int):
    init_dla = pack_module("dla_core.checkpoint").init_dla
    MLLMSpec = pack_module("dla_core.spec").MLLMSpec
    types = pack_module("nodes.types")
    manage = pack_module("nodes.managed_models").manage
    module = init_dla(MLLMSpec(family, num_layers, width), target=target, lap_blocks=0, lap_mlp_hidden=16)
    return types.DLAHandle(patcher=manage(module, "default", f"{target} DLA"), module=module, file_name=target)


@pytest.fixture(scope="module")
def models(comfy, tiny_models_dir, tiny_names, tmp_path_factory):
    """{"flux": FLUX.1 MODEL, and where this ComfyUI has FLUX.2: "flux2", "flux2_klein"}."""
    import comfy.sd
    from tiny_flux2 import build_tiny_flux2, comfy_has_flux2

    from dla_tiny.cache import cached_build

    loaded = {"flux": comfy.sd.load_diffusion_model(str(tiny_models_dir / "diffusion_models" / tiny_names.flux))}
    if comfy_has_flux2():
        root = tmp_path_factory.mktemp("flux2-dits")
        for target, width, guidance in (("flux2", 15360, True), ("flux2_klein", 7680, False)):
            path = cached_build(build_tiny_flux2, root, seed=0, context_width=width, guidance=guidance)
            loaded[target] = comfy.sd.load_diffusion_model(str(path))
    return loaded


def test_model_context_width_reads_comfyuis_text_input_layer(models):
    """Pins the one ComfyUI internal ``model_context_width`` reads (``diffusion_model.txt_in``)."""
    model_fit = pack_module("nodes.model_fit")
    TARGETS = pack_module("dla_core.dla").TARGETS
    for target, model in models.items():
        assert model_fit.model_context_width(model) == TARGETS[target].context_width, target
    assert model_fit.model_context_width(object()) is None


def test_a_flux2_dla_with_a_flux1_model_is_refused_by_the_aggregate_node_with_the_fix(models):
    errors = pack_module("dla_core.errors")
    DLAAggregate = pack_module("nodes.dla_nodes").DLAAggregate
    flux2_dla = _handle("flux2", "mistral3", 41, 32)
    features = _features("mistral3", 41, 32)
    with pytest.raises(errors.DLAInputError) as info:
        DLAAggregate.execute(flux2_dla, features, 4.0, model=models["flux"])
    message = str(info.value)
    assert "for target 'flux2'" in message and "15360 wide" in message
    assert "reads 4096-wide tokens (target 'flux'" in message and "init-dla --target" in message
    # The right pairing passes the same check; without a model nothing is checked.
    flux_dla = _handle("flux", "internvl", 3, 16)
    conditioning = DLAAggregate.execute(flux_dla, _features("internvl", 3, 16), 2.5, model=models["flux"]).result[0]
    assert conditioning[0][0].shape[-1] == 4096
    assert DLAAggregate.execute(flux2_dla, features, 4.0).result[0][0][0].shape[-1] == 15360
    if "flux2" in models:
        DLAAggregate.execute(flux2_dla, features, 4.0, model=models["flux2"])


def test_flux1_and_klein_conditioning_on_a_flux2_dev_model_is_refused_with_the_fix(models):
    errors = pack_module("dla_core.errors")
    if "flux2" not in models:  # this ComfyUI has no FLUX.2: its FLUX.2 node says which version it needs
        with pytest.raises(errors.DLAInputError, match=NEEDS_NEWER):
            pack_module("nodes.flux2_clip").DLAFlux2TextEncode.execute(None, "a fox")
        return
    model_fit = pack_module("nodes.model_fit")
    DLAAggregate = pack_module("nodes.dla_nodes").DLAAggregate
    flux_dla = _handle("flux", "internvl", 3, 16)
    with pytest.raises(
        errors.DLAInputError, match=r"target 'flux' .*4096 wide.*reads 15360-wide tokens \(target 'flux2'"
    ):
        DLAAggregate.execute(flux_dla, _features("internvl", 3, 16), 2.5, model=models["flux2"])
    flux_output = DLAAggregate.execute(flux_dla, _features("internvl", 3, 16), 2.5)
    with pytest.raises(errors.DLAInputError) as info:
        model_fit.check_conditioning_fits_model(models["flux2"], flux_output.result[0])
    message = str(info.value)
    assert "4096-wide text tokens (for target 'flux'" in message and "reads 15360-wide ones (target 'flux2'" in message
    klein_dla = _handle("flux2_klein", "qwen3", 37, 32)
    with pytest.raises(errors.DLAInputError, match=r"target 'flux2_klein'.*reads 15360-wide tokens"):
        DLAAggregate.execute(klein_dla, _features("qwen3", 37, 32), 1.0, model=models["flux2"])
    DLAAggregate.execute(klein_dla, _features("qwen3", 37, 32), 1.0, model=models["flux2_klein"])
