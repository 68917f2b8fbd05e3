"""FLUX.2 training (issue 19) against ComfyUI's own FLUX.2: token layout, velocity, and the exported LoRA.

Tiny FLUX.2 DiTs in ComfyUI's file layout (tests/integration/tiny_flux2.py: 256 wide, 1 + 1 blocks, float32;
a [klein]-like one without guidance embedding and a [dev]-like one with it) are loaded (a) by ComfyUI
(``comfy.sd.load_diffusion_model``) and (b) by the trainer (``dla_core.flux.flux2_weights.load_flux2_transformer``,
the same file). A training batch (two samples of different prompt lengths, two references of different sizes)
runs through the trainer's module (:class:`dla_core.train.module.DLAFluxTrainModule`); the position ids the
diffusers transformer receives and its velocity are compared with what ComfyUI's FLUX.2 builds and predicts
for the same latents, references and DLA conditioning (ComfyUI pads the conditioning to 512 tokens itself:
``model_base.Flux2.extra_conds``). Then the LoRA is trained a few steps through the same module, exported
with ``save_lora`` and applied by ComfyUI (``comfy.sd.load_lora_for_models``, what ``LoraLoaderModelOnly``
calls): it must change ComfyUI's output exactly as it changes diffusers'.

On the oldest row (ComfyUI 0.3.64, diffusers 0.35) neither side has FLUX.2: the tests assert both version
messages instead.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.integration

CONTEXT = 96  # 3 stacked layers of a 32-wide tiny MLLM
RANK = 4
ATOL = 1e-5  # float32 on both sides, as the FLUX.1 LoRA test
FORWARD_ATOL = 5e-6  # the trainer's FLUX.2 vs ComfyUI's, float32 (measured ~1e-6 at |v| ~ 4)
VARIANTS = {"klein": ("flux2_klein", False, "qwen3_vl"), "dev": ("flux2", True, "mistral3")}  # target, guidance, MLLM


def _unsupported() -> bool:
    """True (after asserting the messages) where this row has no FLUX.2 in ComfyUI or in diffusers."""
    from tiny_flux2 import comfy_has_flux2

    from dla_core.flux.flux2 import FLUX2_MIN_DIFFUSERS, flux2_diffusers_problem

    problem = flux2_diffusers_problem()
    if comfy_has_flux2() and problem is None:
        return False
    if problem is not None:
        assert f"need diffusers >= {FLUX2_MIN_DIFFUSERS}" in problem and "this environment has diffusers" in problem
    if not comfy_has_flux2():
        from dla_harness import pack_module

        assert "has no FLUX.2" in pack_module("nodes.compat").flux2_missing_message()
    return True


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def setup(request, comfy, tmp_path_factory):
    """(variant, ComfyUI MODEL, trainer module around the same file, a training batch)."""
    if _unsupported():
        return None
    import comfy.sd
    from tiny_flux2 import build_tiny_flux2

    from dla_core.checkpoint import init_dla
    from dla_core.spec import MLLMSpec
    from dla_core.train.config import config_from_dict
    from dla_core.train.family import load_transformer
    from dla_core.train.module import DLAFluxTrainModule, add_lora
    from dla_tiny.cache import cached_build

    target, guidance, mllm_family = VARIANTS[request.param]
    path = cached_build(
        build_tiny_flux2,
        tmp_path_factory.mktemp("flux2-train"),
        seed=3,
        context_width=CONTEXT,
        guidance=guidance,
        dtype=torch.float32,
    )
    patcher = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": torch.float32})
    transformer = load_transformer("flux2", path, torch.float32)
    add_lora(transformer, config_from_dict({"lora": {"rank": RANK, "alpha": 2.0 * RANK}}), "flux2")
    torch.manual_seed(0)
    spec = MLLMSpec(mllm_family, 4, CONTEXT // 3)
    dla = init_dla(spec, target=target, init="identity", layer_indices=[1, 2, 3], context_width=CONTEXT, lap_blocks=0)
    meta = {"family": mllm_family, "num_layers": 4, "width": CONTEXT // 3, "layer_indices": [0, 1, 2, 3]}
    module = DLAFluxTrainModule(dla, transformer, meta, guidance=2.5, reference_method="index", family="flux2")
    return request.param, patcher, module, _batch()


def _batch() -> dict:
    generator = torch.Generator().manual_seed(1)
    tokens = 9
    attention = torch.ones(2, tokens, dtype=torch.bool)
    attention[1, 6:] = False  # the second prompt is shorter
    image = torch.zeros(2, tokens, dtype=torch.bool)
    image[:, 2:5] = True
    refs = [torch.randn(128, 3, 5, generator=generator), torch.randn(128, 4, 2, generator=generator)]
    return {
        "target": torch.randn(2, 128, 4, 6, generator=generator),
        "references": [refs, [r + 0.5 for r in refs]],  # same shapes: one call for both samples
        "hidden_states": torch.randn(2, 4, tokens, CONTEXT // 3, generator=generator),
        "image_mask": image,
        "text_mask": attention & ~image,
        "attention_mask": attention,
        "prompts": ["a", "b"],
    }


def _step_inputs(batch: dict):
    generator = torch.Generator().manual_seed(2)
    noise = torch.randn(batch["target"].shape, generator=generator)
    sigmas = torch.tensor([0.7, 0.4])
    events = torch.zeros(2, dtype=torch.long)  # KEEP_BOTH: MLLM and identity on (stage 2)
    return noise, sigmas, events


def _comfy_velocities(patcher, module, batch, capture=None) -> torch.Tensor:
    """ComfyUI's FLUX.2 on each sample: its own padding of the DLA conditioning, the same references."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    model = patcher.model
    noise, sigmas, events = _step_inputs(batch)
    guided = module.transformer.config.guidance_embeds
    with torch.no_grad():
        context, mask, _ = module.conditioning(batch, events != 0)
        outputs = []
        for row in range(2):
            s = sigmas[row : row + 1]
            noisy = (1 - s) * batch["target"][row : row + 1] + s * noise[row : row + 1]
            cond = context[row : row + 1, : int(mask[row].sum())]
            padded = model.extra_conds(cross_attn=cond)["c_crossattn"].cond
            options = {"patches": {"post_input": [capture]}} if capture else {}
            outputs.append(
                model.diffusion_model(
                    noisy,
                    s,
                    padded,
                    guidance=torch.tensor([2.5]) if guided else None,
                    ref_latents=[r[None] for r in batch["references"][row]],
                    transformer_options=options,
                )
            )
    return torch.cat(outputs).float()


def _diffusers_velocities(module, batch, capture=None) -> torch.Tensor:
    """The trainer's own call (``family.velocity_tokens`` through the module's grouping), unpacked."""
    from dla_core.flux.flux2 import unpack_flux2_latents
    from dla_core.train import family

    noise, sigmas, events = _step_inputs(batch)
    hook = None
    if capture:
        hook = module.transformer.register_forward_pre_hook(lambda m, a, k: capture(k), with_kwargs=True)
    try:
        with torch.no_grad():
            context, mask, _ = module.conditioning(batch, events != 0)
            s = sigmas[:, None, None, None]
            noisy = (1 - s) * batch["target"] + s * noise
            tokens = family.velocity_tokens(
                "flux2",
                module.transformer,
                noisy,
                sigmas,
                context,
                mask,
                None,
                module.guidance,
                [torch.stack([refs[k] for refs in batch["references"]]) for k in range(2)],
                module.reference_method,
            )
    finally:
        if hook is not None:
            hook.remove()
    return unpack_flux2_latents(tokens, 4, 6).float()


def test_a_training_batch_gets_the_position_ids_comfyui_flux2_builds(setup):
    if setup is None:
        return
    _, patcher, module, batch = setup
    comfy_ids, ours = [], []
    _comfy_velocities(patcher, module, batch, capture=lambda args: comfy_ids.append(args) or args)
    _diffusers_velocities(module, batch, capture=lambda kwargs: ours.append(kwargs))
    assert len(ours) == 1  # both samples in one call: same reference shapes, both padded to 512 tokens
    for row in range(2):
        assert torch.equal(comfy_ids[row]["img_ids"][0], ours[0]["img_ids"])
        assert torch.equal(comfy_ids[row]["txt_ids"][0], ours[0]["txt_ids"])
    img_ids = ours[0]["img_ids"]
    assert img_ids.shape == (24 + 15 + 8, 4) and ours[0]["txt_ids"].shape == (512, 4)
    assert img_ids[:24, 0].eq(0).all() and img_ids[24:39, 0].eq(10).all() and img_ids[39:, 0].eq(20).all()
    # The second prompt is shorter: ComfyUI's zeros in front are what the trainer feeds too.
    hidden = ours[0]["encoder_hidden_states"]
    valid = [int(n) for n in module.conditioning(batch, torch.zeros(2, dtype=torch.bool))[1].sum(1)]
    assert valid[0] > valid[1] and not hidden[1, : 512 - valid[1]].any() and hidden[1, 512 - valid[1] :].any()


def test_the_trainers_flux2_velocity_equals_comfyuis(setup):
    if setup is None:
        return
    variant, patcher, module, batch = setup
    module.transformer.disable_adapters()
    try:
        ours = _diffusers_velocities(module, batch)
    finally:
        module.transformer.enable_adapters()
    theirs = _comfy_velocities(patcher, module, batch)
    gap = (theirs - ours).abs().max().item()
    print(f"{variant}: |ComfyUI - trainer| max {gap:.3g} (|v| max {theirs.abs().max():.3g})")
    torch.testing.assert_close(ours, theirs, atol=FORWARD_ATOL, rtol=0)


def test_exported_flux2_lora_changes_comfyui_exactly_like_diffusers(setup, tmp_path):
    if setup is None:
        return
    import comfy.sd
    import comfy.utils

    from dla_core.flux.flux2_weights import bfl_flux2_to_diffusers
    from dla_core.train.export import save_lora

    variant, patcher, module, batch = setup
    lora = [p for n, p in module.transformer.named_parameters() if "lora_" in n]
    optimizer = torch.optim.AdamW(lora, lr=1e-2)
    noise, sigmas, events = _step_inputs(batch)
    for _ in range(3):  # a few real training steps through the trainer's loss (B starts at zero)
        loss = module(batch, noise, sigmas, events, stage=2)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    lora_file = save_lora(module.transformer, tmp_path / "flux2_lora.safetensors", dtype=torch.float32)
    lora_sd = comfy.utils.load_torch_file(str(lora_file), safe_load=True)
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora_sd, 1.0, 0.0)
    # Every lora_A/lora_B pair found its ComfyUI weight (q, k, v as slices of qkv; linear1 / linear2 whole).
    assert sum(len(p) for p in patched.patches.values()) == len(lora_sd) // 2
    assert any("single_blocks.0.linear1" in key for key in patched.patches)

    comfy_base = _comfy_velocities(patcher, module, batch)
    comfy_lora = _comfy_velocities(patched, module, batch)
    # While the LoRA is on: ComfyUI's patched weights, in diffusers names, are the base weight + B @ A exactly.
    comfy_weights = bfl_flux2_to_diffusers(
        {k: v.detach().clone().float() for k, v in patched.model.diffusion_model.state_dict().items()}
    )
    weight_gap = 0.0
    for key in lora_sd:
        if key.endswith(".lora_A.weight"):
            name = key[len("transformer.") : -len(".lora_A.weight")]
            base = module.transformer.get_submodule(name).base_layer.weight.detach().float()
            merged = base + lora_sd[key.replace("lora_A", "lora_B")].float() @ lora_sd[key].float()
            weight_gap = max(weight_gap, (comfy_weights[f"{name}.weight"] - merged).abs().max().item())
    _comfy_velocities(patcher, module, batch)  # ComfyUI unpatches the shared weights again
    module.transformer.disable_adapters()
    diffusers_base = _diffusers_velocities(module, batch)
    module.transformer.enable_adapters()
    diffusers_lora = _diffusers_velocities(module, batch)

    change = (diffusers_lora - diffusers_base).abs().max().item()
    gap = ((comfy_lora - comfy_base) - (diffusers_lora - diffusers_base)).abs().max().item()
    print(
        f"{variant}: LoRA change of the velocity {change:.3g}; ComfyUI vs diffusers change differs by {gap:.3g}; "
        f"patched weights differ by {weight_gap:.3g}"
    )
    assert weight_gap < 1e-6
    assert change > 100 * ATOL  # the trained LoRA really changes the output
    torch.testing.assert_close(comfy_lora - comfy_base, diffusers_lora - diffusers_base, atol=ATOL, rtol=1e-3)
