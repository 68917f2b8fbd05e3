"""DLASubjectPipeline.load_lora with a diffusers/peft-format LoRA file on the tiny FLUX transformer.

(The ComfyUI-format LoRA is checked against ComfyUI's LoraLoaderModelOnly in
tests/integration/test_pipeline_parity.py.)
"""

import pytest
import torch

from dla_core.errors import DLAInputError
from dla_core.flux.references import flux_forward
from dla_core.flux.weights import load_flux_transformer
from dla_core.pipeline import DLASubjectPipeline
from dla_core.selftest_models import build_tiny_diffusers_flux


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory):
    """A tiny FLUX folder, a peft-wrapped copy with random LoRA weights, and that LoRA saved by diffusers."""
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    folder = tmp_path_factory.mktemp("lora")
    flux = build_tiny_diffusers_flux(folder / "flux", seed=0)
    adapted = load_flux_transformer(flux)
    adapted.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=True)
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:  # peft starts B at zero (a no-op LoRA); make it matter
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    FluxPipeline.save_lora_weights(
        folder, transformer_lora_layers=get_peft_model_state_dict(adapted), weight_name="lora.safetensors"
    )
    return flux, adapted.eval(), folder / "lora.safetensors"


def velocity(transformer):
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 16, 4, 4, generator=generator)
    context = torch.randn(1, 5, 4096, generator=generator)
    pooled = torch.randn(1, 768, generator=generator)
    refs = [torch.randn(1, 16, 4, 4, generator=generator)]
    with torch.no_grad():
        return flux_forward(transformer, latents, 0.6, context, pooled, 2.5, refs)


def bare_pipeline(flux):
    return DLASubjectPipeline(load_flux_transformer(flux), vae=None, mllm=None, dla=None)


def test_loaded_lora_file_reproduces_the_peft_model(lora_setup):
    flux, adapted, lora_file = lora_setup
    pipe = bare_pipeline(flux)
    base = velocity(pipe.transformer)
    pipe.load_lora(lora_file)
    torch.testing.assert_close(velocity(pipe.transformer), velocity(adapted), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(velocity(pipe.transformer), base, atol=1e-3)


def test_lora_scale_zero_leaves_the_model_unchanged(lora_setup):
    flux, _, lora_file = lora_setup
    pipe = bare_pipeline(flux)
    base = velocity(pipe.transformer)
    pipe.load_lora(lora_file, scale=0.0)
    torch.testing.assert_close(velocity(pipe.transformer), base)


def test_lora_that_is_not_safetensors_is_refused_without_unpickling(lora_setup, tmp_path):
    flux, _, _ = lora_setup
    pickle_file = tmp_path / "lora.bin"
    pickle_file.write_bytes(b"not a pickle either")
    with pytest.raises(DLAInputError, match="only safetensors"):
        bare_pipeline(flux).load_lora(pickle_file)
