"""The trainer's exported LoRA file patches a ComfyUI FLUX exactly like peft patches the diffusers FLUX.

ComfyUI-size tiny FLUX (BFL layout, hidden 3072, 1 + 1 blocks) from the shared tiny model tree,
loaded (a) by ComfyUI (``comfy.sd.load_diffusion_model``, float32) and (b) as a diffusers
``FluxTransformer2DModel`` (``load_flux_transformer``). A peft LoRA with non-zero factors (a
"trained" one) is added to (b) through the trainer's own ``add_lora`` and written with
``save_lora``; ComfyUI applies that file with ``comfy.sd.load_lora_for_models`` (what
``LoraLoaderModelOnly`` calls). Both models then see the same latent, sigma, context, pooled
vector and guidance.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.integration

RANK = 4
ATOL = 1e-5  # float32 on both sides; ComfyUI merges B@A into the weight, peft adds B(Ax)


@pytest.fixture(scope="module")
def lora_setup(comfy, tiny_models_dir, tmp_path_factory):
    from dla_core.flux.weights import load_flux_transformer
    from dla_core.train.config import config_from_dict
    from dla_core.train.export import save_lora
    from dla_core.train.trainer import add_lora

    flux_file = tiny_models_dir / "diffusion_models" / "tiny_flux.safetensors"
    transformer = load_flux_transformer(flux_file, dtype=torch.float32).eval()
    add_lora(transformer, config_from_dict({"lora": {"rank": RANK, "alpha": 2.0 * RANK}}))  # scale 2 is folded into B
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_" in name:  # B starts at zero; stand in for training
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    lora_file = save_lora(transformer, tmp_path_factory.mktemp("lora") / "dla_lora.safetensors", dtype=torch.float32)
    return flux_file, transformer, lora_file


def _inputs():
    generator = torch.Generator().manual_seed(1)
    return dict(
        latents=torch.randn(1, 16, 8, 8, generator=generator),
        sigma=torch.tensor([0.6]),
        context=torch.randn(1, 6, 4096, generator=generator),
        pooled=torch.randn(1, 768, generator=generator),
        guidance=2.5,
    )


def _comfy_velocity(patcher, inputs) -> torch.Tensor:
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    model = patcher.model.diffusion_model
    with torch.no_grad():
        return model(
            inputs["latents"],
            inputs["sigma"],
            inputs["context"],
            y=inputs["pooled"],
            guidance=torch.tensor([inputs["guidance"]]),
        ).float()


def _diffusers_velocity(transformer, inputs) -> torch.Tensor:
    from dla_core.flux.references import flux_forward

    with torch.no_grad():
        return flux_forward(
            transformer,
            inputs["latents"],
            inputs["sigma"],
            inputs["context"],
            inputs["pooled"],
            guidance=inputs["guidance"],
        ).float()


def test_exported_lora_changes_comfyui_flux_exactly_like_diffusers(lora_setup):
    import comfy.sd
    import comfy.utils

    flux_file, transformer, lora_file = lora_setup
    inputs = _inputs()
    base = comfy.sd.load_diffusion_model(str(flux_file), model_options={"dtype": torch.float32})
    lora_sd = comfy.utils.load_torch_file(str(lora_file), safe_load=True)
    patched, _ = comfy.sd.load_lora_for_models(base, None, lora_sd, 1.0, 0.0)
    # Every lora_A/lora_B pair found its ComfyUI weight (q, k, v land as slices of one fused qkv / linear1).
    assert sum(len(p) for p in patched.patches.values()) == len(lora_sd) // 2

    comfy_base = _comfy_velocity(base, inputs)
    comfy_lora = _comfy_velocity(patched, inputs)
    transformer.disable_adapters()
    diffusers_base = _diffusers_velocity(transformer, inputs)
    transformer.enable_adapters()
    diffusers_lora = _diffusers_velocity(transformer, inputs)

    change = (diffusers_lora - diffusers_base).abs().max().item()
    print(
        f"LoRA change of the velocity: {change:.3g}; ComfyUI vs diffusers with LoRA: "
        f"{(comfy_lora - diffusers_lora).abs().max().item():.3g}"
    )
    assert change > 100 * ATOL  # the LoRA really changes the output
    torch.testing.assert_close(comfy_base, diffusers_base, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(comfy_lora - comfy_base, diffusers_lora - diffusers_base, atol=ATOL, rtol=1e-3)
