"""Training and inference drive FLUX with the same token layout: text, image and reference tokens, their ids.

The trainer's loss (``DLAFluxTrainModule.forward``) and the sampler's ``flux_forward`` are run on the
same tiny diffusers FLUX with the same inputs; a forward pre-hook records what the transformer
receives in each case, and the two calls must match exactly (and match ComfyUI's layout rules).
"""

from __future__ import annotations

import pytest
import torch

from dla_core.checkpoint import init_dla
from dla_core.flux.references import flux_forward, image_position_ids, reference_placements
from dla_core.flux.weights import load_flux_transformer
from dla_core.selftest_models import build_tiny_diffusers_flux
from dla_core.spec import MLLMSpec
from dla_core.train.module import KEEP_BOTH, DLAFluxTrainModule

LAYERS, WIDTH, TOKENS = 3, 32, 7
GUIDANCE = 3.5


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    folder = build_tiny_diffusers_flux(tmp_path_factory.mktemp("flux") / "flux", seed=0)
    return load_flux_transformer(folder, dtype=torch.float32).eval()


def _record(transformer):
    calls = []

    def hook(_module, _args, kwargs):
        calls.append({k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})

    return calls, transformer.register_forward_pre_hook(hook, with_kwargs=True)


def _inputs(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    text = torch.tensor([True] * 4 + [False] * 3)
    image = torch.tensor([False] * 4 + [True] * 3)
    batch_dict = {
        "hidden_states": torch.randn(batch, LAYERS, TOKENS, WIDTH, generator=generator),
        "image_mask": image.expand(batch, -1).clone(),
        "text_mask": text.expand(batch, -1).clone(),
        "attention_mask": torch.ones(batch, TOKENS, dtype=torch.bool),
        "target": torch.randn(batch, 16, 6, 4, generator=generator),  # 6x4 latent pixels -> 3x2 patches
        "references": [
            [torch.randn(16, 4, 6, generator=generator), torch.randn(16, 2, 2, generator=generator)]
            for _ in range(batch)
        ],
        "prompts": ["a"] * batch,
    }
    noise = torch.randn(batch_dict["target"].shape, generator=generator)
    sigmas = torch.rand(batch, generator=generator)
    return batch_dict, noise, sigmas


def _module(transformer, method):
    spec = MLLMSpec("internvl", LAYERS, WIDTH)
    dla = init_dla(spec, lap_width=32, lap_heads=2, lap_mlp_hidden=64, null_length=4, seed=0)
    meta = {"family": "internvl", "num_layers": LAYERS, "width": WIDTH, "layer_indices": list(range(LAYERS))}
    return DLAFluxTrainModule(dla, transformer, meta, GUIDANCE, method).eval()


@pytest.mark.parametrize("method", ["offset", "index", "uxo"])
def test_training_and_inference_send_the_same_tokens_and_ids(transformer, method):
    module = _module(transformer, method)
    batch, noise, sigmas = _inputs()
    events = torch.full((2,), KEEP_BOTH)
    calls, handle = _record(transformer)
    try:
        with torch.no_grad():
            module(batch, noise, sigmas, events, stage=2)
            cond = module.dla(module.features(batch))
            s = sigmas[:, None, None, None]
            noisy = (1 - s) * batch["target"] + s * noise
            refs = [torch.stack([row[k] for row in batch["references"]]) for k in range(2)]
            flux_forward(transformer, noisy, sigmas, cond.tokens, cond.pooled, GUIDANCE, refs, method)
    finally:
        handle.remove()
    training, inference = calls
    assert training.keys() == inference.keys()
    for key in (
        "hidden_states",
        "encoder_hidden_states",
        "pooled_projections",
        "timestep",
        "img_ids",
        "txt_ids",
        "guidance",
    ):
        assert torch.equal(training[key], inference[key]), key
    assert training.get("joint_attention_kwargs") is None  # every text token is valid: nothing to mask

    # The layout itself: [text ; image ; reference 1 ; reference 2], text ids zero, image ids from (0, 0).
    patches = 3 * 2
    ids = training["img_ids"]
    assert training["hidden_states"].shape[1] == patches + 2 * 3 + 1 * 1 == ids.shape[0]
    assert torch.equal(ids[:patches], image_position_ids(6, 4))
    placements = reference_placements((6, 4), [(4, 6), (2, 2)], method)
    expected_refs = torch.cat(
        [image_position_ids(h, w, p.index, p.h_offset, p.w_offset) for (h, w), p in zip([(4, 6), (2, 2)], placements)]
    )
    assert torch.equal(ids[patches:], expected_refs)
    assert torch.equal(training["txt_ids"], torch.zeros(cond.tokens.shape[1], 3))


def test_training_dropout_uses_the_dlas_null_conditioning(transformer):
    """A sample whose MLLM condition is dropped sees exactly ``drop_to_null``'s tokens, masked like inference."""
    module = _module(transformer, "offset")
    with torch.no_grad():
        module.dla.null_tokens.normal_()  # a learned null that differs from zero
    batch, _, _ = _inputs()
    drop = torch.tensor([True, False])
    with torch.no_grad():
        context, mask, pooled = module.conditioning(batch, drop)
        expected = module.dla.drop_to_null(module.dla(module.features(batch)), drop)
    assert torch.equal(context, expected.tokens) and torch.equal(mask, expected.token_mask)
    assert torch.equal(pooled, expected.pooled)
    null = module.dla.null_conditioning(1)
    assert torch.equal(context[0, : null.tokens.shape[1]], null.tokens[0])
    assert int(mask[0].sum()) == null.tokens.shape[1]
