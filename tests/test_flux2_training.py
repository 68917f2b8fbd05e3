"""Training the DLA + LoRA on FLUX.2 (issue 19): layer pins, identity init from Qwen3-VL, token layout,
bad input before any model loads, and prepare -> train -> resume -> export on tiny FLUX.2 worlds.

Tiny diffusers ``Flux2Transformer2DModel``s built in code (a [klein]-like one without guidance embedding
read by a tiny Qwen3-VL, a [dev]-like one with it read by a tiny Mistral-3), a tiny ``AutoencoderKLFlux2``
(tests/lib/dla_tiny/flux2_training.py). On a diffusers without FLUX.2 (the oldest CI row, 0.35) every
test that needs it asserts the trainer's version message instead. The ComfyUI side (position ids of a
training batch against ComfyUI's FLUX.2, LoRA parity) is in tests/integration/test_flux2_training_comfy.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dla_core.checkpoint import init_dla, save_dla
from dla_core.cli import main as cli_main
from dla_core.dla import FLUX2_DEV_TEXT_LAYERS, FLUX2_KLEIN_TEXT_LAYERS, TARGETS
from dla_core.errors import DLAInputError
from dla_core.features import MLLMFeatures
from dla_core.flux.flux2 import (
    FLUX2_MIN_DIFFUSERS,
    FLUX2_TEXT_TOKENS,
    flux2_context,
    flux2_diffusers_problem,
    flux2_reference_tokens,
)
from dla_core.spec import MLLMSpec
from dla_core.train.config import config_from_dict

FLUX2_PROBLEM = flux2_diffusers_problem()
VERSION_MESSAGE = rf"need diffusers >= {FLUX2_MIN_DIFFUSERS} .*this environment has diffusers \d"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- layer pins and identity init


def test_flux2_text_layers_are_pinned_once_per_target():
    """BFL / ComfyUI / diffusers pipelines: [dev] reads Mistral-3 layers 10, 20, 30; both [klein] Qwen3 layers
    9, 18, 27 (diffusers' [klein] training script once defaulted to [10, 20, 30])."""
    assert FLUX2_DEV_TEXT_LAYERS == (10, 20, 30) and FLUX2_KLEIN_TEXT_LAYERS == (9, 18, 27)
    assert TARGETS["flux2"].native.layers == FLUX2_DEV_TEXT_LAYERS
    assert TARGETS["flux2_klein"].native.layers == FLUX2_KLEIN_TEXT_LAYERS
    assert TARGETS["flux2_klein_9b"].native.layers == FLUX2_KLEIN_TEXT_LAYERS
    for target, width in (("flux2", 5120), ("flux2_klein", 2560), ("flux2_klein_9b", 4096)):
        assert TARGETS[target].context_width == 3 * width == 3 * TARGETS[target].native.width


@pytest.mark.parametrize("target", ["flux2_klein", "flux2_klein_9b"])
def test_identity_dla_from_a_qwen3_vl_stacks_klein_layers_9_18_27_per_token(target):
    width = 8
    dla = init_dla(MLLMSpec("qwen3_vl", 37, width), target=target, init="identity", context_width=3 * width)
    assert dla.config.layer_indices == [9, 18, 27] and dla.config.fuse == "sequence"
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 37, 6, width, generator=generator) * 30
    text = torch.tensor([[True, True, True, False, False, True]])
    features = MLLMFeatures(
        hidden_states=hidden,
        image_mask=~text,
        text_mask=text,
        attention_mask=torch.ones_like(text),
        family="qwen3_vl",
        num_layers=37,
        width=width,
        layer_indices=tuple(range(37)),
    )
    with torch.no_grad():
        output = dla(features)
    # Text and image tokens alike, in the MLLM's order: [layer 9 | layer 18 | layer 27] per token.
    assert torch.equal(output.tokens, torch.cat([hidden[:, 9], hidden[:, 18], hidden[:, 27]], dim=-1))


@pytest.mark.parametrize(("target", "width"), [("flux2_klein", 2560), ("flux2_klein_9b", 4096)])
def test_full_size_identity_dla_for_qwen3_vl_4b_and_8b_without_allocating(target, width):
    """Qwen3-VL-4B / -8B: 36 decoder layers of Qwen3-4B's / Qwen3-8B's width."""
    with torch.device("meta"):
        dla = init_dla(MLLMSpec("qwen3_vl", 37, width), target=target, init="identity", lap_blocks=0)
    config = dla.config
    assert config.layer_indices == [9, 18, 27] and config.lap_output_width == config.context_width == 3 * width


def test_identity_init_refuses_an_mllm_whose_width_fits_no_flux2_target(tmp_path, capsys):
    folder = tmp_path / "qwen3-vl-narrow"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "qwen3_vl", "text_config": {"hidden_size": 1536, "num_hidden_layers": 36}})
    )
    code = cli_main(
        ["init-dla", "--mllm", str(folder), "--target", "flux2_klein", "--init", "identity", "--out", "x.safetensors"]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "takes 7680-wide tokens" in error and "1536 wide" in error and "--init random" in error


# ----------------------------------------------------------------------------- token layout (no model)


def test_flux2_context_is_padded_with_zeros_in_front_to_512_tokens_as_comfyui_does():
    context = torch.randn(2, 5, 3)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    padded = flux2_context(context, mask)
    assert padded.shape == (2, FLUX2_TEXT_TOKENS, 3)
    assert torch.equal(padded[0, -5:], context[0]) and torch.equal(padded[1, -3:], context[1, :3])
    assert not padded[0, :-5].any() and not padded[1, :-3].any()
    long = torch.randn(1, 600, 3)
    assert torch.equal(flux2_context(long), long)  # ComfyUI leaves a longer context as it is
    with pytest.raises(DLAInputError, match="longer than 512 tokens"):
        flux2_context(torch.randn(2, 600, 3), torch.tensor([[True] * 600, [True] * 10 + [False] * 590]))


def test_each_reference_sits_at_its_own_time_offset_ten_apart():
    refs = [torch.randn(1, 128, 2, 3), torch.randn(1, 128, 1, 2)]
    tokens, ids = flux2_reference_tokens(refs, batch_size=2)
    assert tokens.shape == (2, 6 + 2, 128)
    assert ids[:6, 0].tolist() == [10.0] * 6 and ids[6:, 0].tolist() == [20.0] * 2
    assert ids[:6, 1:3].tolist() == [[r, c] for r in range(2) for c in range(3)] and not ids[:, 3].any()


# ----------------------------------------------------------------------------- bad input, before any model loads


def _fake_transformer(folder: Path, class_name: str, **config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": class_name, **config}))
    return folder


def _fake_cache(folder: Path) -> Path:
    """The index and one shard header of a prepared cache (what preflight reads), from a tiny Qwen3-VL."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    index = {"num_samples": 1, "shard_size": 1, "num_shards": 1, "fingerprint": "f", "resolution": 64}
    (folder / "cache.json").write_text(json.dumps(index))
    features = {"family": "qwen3_vl", "num_layers": 4, "width": 8, "layer_indices": [0, 1, 2, 3]}
    samples = [{"index": 0, "prompt": "a subject", "num_references": 1}]
    metadata = {"fingerprint": "f", "features": json.dumps(features), "samples": json.dumps(samples)}
    save_file({"0.target": torch.zeros(1)}, str(folder / "shard-00000.safetensors"), metadata=metadata)
    return folder


def _bad_input_config(tmp_path: Path, transformer: Path, dla) -> object:
    dla_path = save_dla(dla, tmp_path / "init_dla.safetensors")
    raw = {
        "model": {"flux": str(transformer), "init_dla": str(dla_path)},
        "data": {"cache_dir": str(_fake_cache(tmp_path / "cache"))},
        "train": {"output_dir": str(tmp_path / "out")},
    }
    return config_from_dict(raw, base_dir=tmp_path)


KLEIN = dict(joint_attention_dim=24, guidance_embeds=False, axes_dims_rope=[32, 32, 32, 32])
DEV = dict(joint_attention_dim=24, guidance_embeds=True, axes_dims_rope=[32, 32, 32, 32])


def _tiny_dla(target: str, **kwargs):
    return init_dla(MLLMSpec("qwen3_vl", 4, 8), target=target, lap_blocks=0, lap_mlp_hidden=8, **kwargs)


@pytest.mark.parametrize(
    ("transformer", "target", "message"),
    [
        (("Flux2Transformer2DModel", KLEIN), "flux", r"DLA is for target 'flux' .*transformer .* is FLUX\.2.*--target"),
        (("Flux2Transformer2DModel", DEV), "flux2_klein", r"'flux2_klein' .*is FLUX\.2 \[dev\].*--target flux2"),
        (("Flux2Transformer2DModel", DEV), "flux2_klein_9b", r"'flux2_klein_9b' .*is FLUX\.2 \[dev\]"),
        (("Flux2Transformer2DModel", KLEIN), "flux2", r"'flux2' .*is FLUX\.2 \[klein\].*flux2_klein"),
        (
            ("FluxTransformer2DModel", {"joint_attention_dim": 24, "pooled_projection_dim": 768}),
            "flux2_klein",
            r"DLA is for FLUX\.2 \('flux2_klein'\) but the transformer .* is FLUX\.1",
        ),
    ],
)
def test_a_dla_for_another_dit_is_refused_before_any_model_loads(tmp_path, transformer, target, message):
    from dla_core.train.trainer import preflight

    class_name, config = transformer
    folder = _fake_transformer(tmp_path / "transformer", class_name, **config)  # a config, no weights at all
    context = {} if target == "flux" else {"context_width": 24}
    config = _bad_input_config(tmp_path, folder, _tiny_dla(target, **context))
    if FLUX2_PROBLEM and class_name.startswith("Flux2"):
        message = VERSION_MESSAGE  # the oldest row: the version comes first
    with pytest.raises(DLAInputError, match=message):
        preflight(config)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"timestep_shift": "resolution"}, r"timestep_shift 'resolution' is FLUX\.1's shift.*'fixed'"),
        ({"reference_method": "offset"}, r"'offset' is not supported for FLUX\.2.*index"),
    ],
)
def test_flux1_only_settings_are_refused_for_flux2_before_any_model_loads(tmp_path, train, message):
    from dla_core.train.trainer import preflight

    folder = _fake_transformer(tmp_path / "transformer", "Flux2Transformer2DModel", **KLEIN)
    config = _bad_input_config(tmp_path, folder, _tiny_dla("flux2_klein", context_width=24))
    for key, value in train.items():
        setattr(config.train, key, value)
    with pytest.raises(DLAInputError, match=VERSION_MESSAGE if FLUX2_PROBLEM else message):
        preflight(config)


def test_flux2_is_refused_on_an_old_diffusers_naming_the_version_before_anything_loads(tmp_path):
    """The oldest CI row (diffusers 0.35) gets the message; a current one has FLUX.2 and no message."""
    from dla_core.train.trainer import train

    folder = _fake_transformer(tmp_path / "transformer", "Flux2Transformer2DModel", **KLEIN)
    config = _bad_input_config(tmp_path, folder, _tiny_dla("flux2_klein", context_width=24))
    if FLUX2_PROBLEM is None:
        import diffusers
        from packaging.version import Version

        assert Version(diffusers.__version__) >= Version(FLUX2_MIN_DIFFUSERS)
        assert hasattr(diffusers, "Flux2Transformer2DModel")
        return
    with pytest.raises(DLAInputError, match=VERSION_MESSAGE):
        train(config)
    assert not (tmp_path / "out").exists()  # refused before accelerate, models or outputs


# ----------------------------------------------------------------------------- training on tiny FLUX.2 worlds


def _world(tmp_path_factory, variant: str):
    if FLUX2_PROBLEM:
        return None
    from dla_core.train.prepare import prepare_cache
    from dla_tiny.flux2_training import build_tiny_flux2_training_world, tiny_flux2_run_config

    family = "qwen3_vl" if variant == "klein" else "mistral3"
    root = build_tiny_flux2_training_world(tmp_path_factory.mktemp(f"flux2_{variant}"), variant, family)
    raw = tiny_flux2_run_config()
    prepare_cache(config_from_dict(raw, base_dir=root), rank=0, world_size=1, progress=False)
    return root, raw


@pytest.fixture(scope="module")
def klein_world(tmp_path_factory):
    return _world(tmp_path_factory, "klein")


def _config(world, **train):
    root, raw = world
    raw = json.loads(json.dumps(raw))
    raw["train"].update(train)
    return config_from_dict(raw, base_dir=root)


def _refused_here(world) -> bool:
    """On a diffusers without FLUX.2: assert that training says which version it needs (and nothing ran)."""
    if world is not None:
        return False
    assert FLUX2_PROBLEM and "diffusers >=" in FLUX2_PROBLEM
    return True


@pytest.fixture(scope="module")
def klein_run(klein_world):
    if klein_world is None:
        return None
    from dla_core.train.trainer import train

    config = _config(klein_world, output_dir=str(klein_world[0] / "full"))
    return config, train(config)


def test_klein_stage1_and_stage2_loss_falls(klein_run):
    if _refused_here(klein_run):
        return
    config, result = klein_run
    losses, k = result.losses, 8
    assert len(losses) == 32
    first = sum(losses[:k]) / k
    assert sum(losses[20 - k : 20]) / k < 0.97 * first  # stage 1 (MLLM only)
    assert sum(losses[-k:]) / k < 0.97 * first  # stage 2 (MLLM + identity)


def test_klein_run_trains_the_dla_and_a_lora_on_both_block_kinds(klein_run):
    if _refused_here(klein_run):
        return
    from safetensors import safe_open

    from dla_core.checkpoint import read_dla_config

    config, result = klein_run
    with safe_open(str(result.export_dir / "lora.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        training = json.loads(handle.metadata()["training"])
    assert training["family"] == "flux2" and training["reference_method"] == "index"
    for module in (
        "transformer_blocks.0.attn.to_q",
        "transformer_blocks.0.attn.to_out.0",
        "transformer_blocks.0.attn.add_k_proj",
        "transformer_blocks.0.attn.to_add_out",
        "single_transformer_blocks.0.attn.to_qkv_mlp_proj",
        "single_transformer_blocks.0.attn.to_out",
    ):
        assert f"transformer.{module}.lora_A.weight" in keys and f"transformer.{module}.lora_B.weight" in keys
    assert not any(".ff." in key or "norm" in key for key in keys)  # attention only
    dla = read_dla_config(result.export_dir / "dla.safetensors")
    assert dla.target == "flux2_klein" and dla.mllm_family == "qwen3_vl"


def test_klein_resumed_run_repeats_the_uninterrupted_loss_curve(klein_world):
    if _refused_here(klein_world):
        return
    from dla_core.train.trainer import train

    steps = dict(stage1_steps=3, stage2_steps=3)
    straight = train(_config(klein_world, output_dir=str(klein_world[0] / "straight"), **steps), export=False)
    split = _config(klein_world, output_dir=str(klein_world[0] / "split"), **steps)
    first = train(split, stop_at_step=4, export=False)  # stops inside stage 2
    second = train(split, resume="latest", export=False)
    assert (first.end_step, second.start_step, second.end_step) == (4, 4, 6)
    assert np.allclose(first.losses + second.losses, straight.losses, rtol=1e-6, atol=1e-7)


def test_dev_like_flux2_with_guidance_and_a_mistral3_mllm_trains(tmp_path_factory):
    world = _world(tmp_path_factory, "dev")
    if _refused_here(world):
        return
    from dla_core.train.trainer import train

    config = _config(world, output_dir=str(world[0] / "dev"), stage1_steps=8, stage2_steps=8)
    module_guidance = config.train.guidance
    result = train(config, export=False)
    k = 4
    assert sum(result.losses[-k:]) / k < 0.97 * sum(result.losses[:k]) / k
    assert module_guidance == 3.5  # fed to [dev]'s guidance embedding ([klein] has none)


# ----------------------------------------------------------------------------- recipes


def test_klein_recipe_reads_klein_layers_with_flux2_lora_targets_at_the_papers_steps():
    from dla_core.flux.flux2_weights import FLUX2_ATTENTION_TARGETS
    from dla_core.train.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "train_flux2_klein.yaml")
    assert (config.train.stage1_steps, config.train.stage2_steps) == (25_000, 10_000)
    assert config.model.family == "flux2" and config.train.reference_method == "index"
    assert tuple(config.data.mllm_layers) == FLUX2_KLEIN_TEXT_LAYERS
    assert tuple(config.lora.target_modules) == FLUX2_ATTENTION_TARGETS


def test_tiny_twin_is_what_the_tiny_runs_here_use():
    from dla_core.train.config import load_config
    from dla_tiny.flux2_training import TINY_CONFIG, tiny_flux2_run_config

    config = load_config(TINY_CONFIG)  # valid as shipped (paths under configs/tiny-run-flux2/)
    assert config.total_steps == 32 and config.model.flux.endswith("tiny-run-flux2/flux2")
    assert tiny_flux2_run_config()["model"]["flux"] == "flux2"


def test_klein_trains_under_ddp_with_two_cpu_processes(klein_world, tmp_path):
    """Two CPU processes (torchrun + accelerate's MULTI_CPU, gloo): both ranks step together and rank 0 logs their
    mean loss, checkpoints and exports. Rank 0 draws exactly what a one-process run with the same batch draws,
    so a different first loss shows that rank 1's loss entered it."""
    if _refused_here(klein_world):
        return
    import os
    import socket
    import subprocess
    import sys

    import yaml
    from dla_train_helpers import read_loss_csv
    from safetensors.torch import load_file

    from dla_core.train.trainer import train
    from dla_tiny.flux2_training import tiny_flux2_run_config

    root, _ = klein_world
    steps = dict(stage1_steps=3, stage2_steps=3, batch_size=1)
    raw = tiny_flux2_run_config(output_dir=str(tmp_path / "ddp"), **steps)
    for section in raw.values():  # absolute paths: the YAML lives elsewhere
        for key, value in section.items():
            if key in ("mllm", "flux", "vae", "init_dla", "manifest", "cache_dir"):
                section[key] = str(root / value)
    config_file = tmp_path / "ddp.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    repo = Path(__file__).resolve().parents[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    command += ["-m", "dla_core.train", "--config", str(config_file)]
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    rows = read_loss_csv(tmp_path / "ddp" / "loss.csv")
    assert [r[0] for r in rows] == list(range(1, 7)) and [r[1] for r in rows] == [1, 1, 1, 2, 2, 2]
    assert all(np.isfinite(r[2]) for r in rows)
    final = tmp_path / "ddp" / "final"
    lora = load_file(str(final / "lora.safetensors"))
    assert (final / "dla.safetensors").is_file()
    assert any(".lora_B." in k and v.abs().max() > 0 for k, v in lora.items())  # trained: B starts at zero
    alone = train(_config(klein_world, output_dir=str(tmp_path / "alone"), **steps), stop_at_step=1, export=False)
    assert not np.isclose(rows[0][2], alone.losses[0], rtol=1e-6)
