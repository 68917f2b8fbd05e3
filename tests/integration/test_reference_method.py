"""DLAReferenceLatents leaves the reference method to the model by default (Qwen-Image-Edit-2511 on new ComfyUI).

Newer ComfyUI reads a Qwen-Image-Edit model's own ``reference_latents_method`` from its file
(2511 carries an ``__index_timestep_zero__`` marker); a conditioning that names a method overrides
it. The node's default must therefore write nothing, so that sampling equals the native
``ReferenceLatent`` node (which writes no method) on every ComfyUI; an explicit choice still
overrides; ComfyUI 0.3.64, which lacks ``index_timestep_zero``, falls back to ``index`` with a message.
"""

from __future__ import annotations

import pytest
import torch
from dla_harness import pack_module

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 5
STEPS = 2


@pytest.fixture(scope="module")
def qwen_2511(comfy, tmp_path_factory):
    """A tiny Qwen-Image-Edit-2511-style DiT (1 block, with the 2511 marker), loaded by ComfyUI's own loader."""
    import comfy.sd

    from dla_tiny.cache import cached_build
    from dla_tiny.qwen_image import build_tiny_qwen_image_dit

    path = cached_build(
        build_tiny_qwen_image_dit, tmp_path_factory.mktemp("qwen-2511"), seed=0, index_timestep_zero=True
    )
    model = comfy.sd.load_diffusion_model(str(path))
    yield model
    import comfy.model_management

    comfy.model_management.unload_all_models()


@pytest.fixture(scope="module")
def reference_vae(comfy, tiny_names):
    import nodes as comfy_nodes

    return comfy_nodes.VAELoader().load_vae(tiny_names.vae)[0]


@pytest.fixture(scope="module")
def qwen_vae(comfy, tmp_path_factory):
    """Qwen-Image's VAE layout (Wan 2.1; full size, random), loaded by ComfyUI: 5-D latents as the DiT expects."""
    import comfy.sd
    import comfy.utils

    from dla_tiny.cache import cached_build
    from dla_tiny.qwen_image import build_tiny_qwen_image_vae

    path = cached_build(build_tiny_qwen_image_vae, tmp_path_factory.mktemp("qwen-vae"), seed=0)
    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))


def _text_conditioning() -> list:
    generator = torch.Generator().manual_seed(1)
    return [[torch.randn(1, 6, 3584, generator=generator) * 0.5, {}]]


def _sample(model, positive) -> torch.Tensor:
    import nodes as comfy_nodes

    latent = {"samples": torch.zeros(1, 16, 1, 8, 8)}
    negative = [[torch.zeros(1, 6, 3584), {}]]
    return comfy_nodes.common_ksampler(model, SEED, STEPS, 1.0, "euler", "simple", positive, negative, latent)[0][
        "samples"
    ]


def _frame() -> torch.Tensor:
    return torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(2))


def test_the_default_choice_writes_no_method(comfy, reference_vae):
    node = pack_module("nodes.qwen_identity").DLAReferenceLatents
    schema = node.define_schema() if hasattr(node, "define_schema") else node.GET_SCHEMA()
    method_input = next(i for i in schema.inputs if i.id == "reference_latents_method")
    assert method_input.default == pack_module("nodes.qwen_identity").MODEL_OWN_METHOD
    out = node.execute(_text_conditioning(), reference_vae, 64, method_input.default, image1=_frame()).result[0]
    assert "reference_latents_method" not in out[0][1]
    assert len(out[0][1]["reference_latents"]) == 1


def test_default_samples_like_native_reference_latent_and_an_explicit_choice_overrides(comfy, qwen_2511, qwen_vae):
    """With a 2511 model: the node's default == native ReferenceLatent.

    With index_timestep_zero known, 'index' differs.
    """
    from comfy_extras.nodes_edit_model import ReferenceLatent

    identity = pack_module("nodes.qwen_identity")
    text = _text_conditioning()
    ours = identity.DLAReferenceLatents.execute(text, qwen_vae, 32, identity.MODEL_OWN_METHOD, image1=_frame()).result[
        0
    ]
    latents = ours[0][1]["reference_latents"]
    assert len(latents) == 1 and latents[0].ndim == 5
    native = ReferenceLatent.execute(text, {"samples": latents[0]}).result[0]  # the native node writes no method
    native_latent = _sample(qwen_2511, native)
    assert torch.equal(_sample(qwen_2511, ours), native_latent)

    own = getattr(qwen_2511.model.diffusion_model, "default_ref_method", "index")
    forced = identity.DLAReferenceLatents.execute(text, qwen_vae, 32, "index", image1=_frame()).result[0]
    assert forced[0][1]["reference_latents_method"] == "index"
    if "index_timestep_zero" in identity.available_reference_methods():
        # New ComfyUI read the 2511 marker from the file; writing 'index' (the node's old default) overrides it.
        assert own == "index_timestep_zero"
        assert not torch.equal(_sample(qwen_2511, forced), native_latent)
    else:
        # ComfyUI 0.3.64 knows only index for Qwen-Image: both agree.
        assert torch.equal(_sample(qwen_2511, forced), native_latent)


def test_the_2511_choice_uses_index_timestep_zero_or_falls_back_with_a_message(comfy, reference_vae, caplog):
    identity = pack_module("nodes.qwen_identity")
    out = identity.DLAReferenceLatents.execute(
        _text_conditioning(), reference_vae, 64, "qwen_image_edit_2511 (index_timestep_zero)", image1=_frame()
    ).result[0]
    if "index_timestep_zero" in identity.available_reference_methods():
        assert out[0][1]["reference_latents_method"] == "index_timestep_zero"
        assert "index_timestep_zero" not in caplog.text
    else:
        assert out[0][1]["reference_latents_method"] == "index"
        assert "index_timestep_zero" in caplog.text and "using 'index'" in caplog.text


def test_a_method_outside_the_options_is_a_clear_error(comfy, reference_vae):
    identity = pack_module("nodes.qwen_identity")
    error = pack_module("dla_core.errors").DLAInputError
    with pytest.raises(error, match="not one of this node's options"):
        identity.DLAReferenceLatents.execute(_text_conditioning(), reference_vae, 64, "sideways", image1=_frame())
