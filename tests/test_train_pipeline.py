"""prepare -> two-stage training -> resume -> export, on tiny random models and a synthetic data set.

Everything is built in the test (``dla_core.train.tiny_setup``): a tiny InternVL, a tiny diffusers
FLUX transformer and VAE, an init DLA, and four reference/target PNG pairs (one with two references
of another size, so stage 2 batches mix reference layouts).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dla_core.train.config import config_from_dict
from dla_core.train.prepare import CACHE_INDEX, prepare_cache, shard_name

NUM_SAMPLES = 4
SHARD_SIZE = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are slower with several threads on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    """Tiny models, data set and base config (dict) with everything relative to ``root``."""
    from dla_train_helpers import tiny_run_config

    from dla_core.train.tiny_setup import build_tiny_training_world

    root = build_tiny_training_world(tmp_path_factory.mktemp("train_world"), num_samples=NUM_SAMPLES, seed=0)
    raw = tiny_run_config()
    assert raw["data"]["shard_size"] == SHARD_SIZE
    return root, raw


def _config(world, **train):
    root, raw = world
    raw = json.loads(json.dumps(raw))
    raw["train"].update(train)
    return config_from_dict(raw, base_dir=root)


@pytest.fixture(scope="module")
def prepared(world):
    config = _config(world)
    report = prepare_cache(config, rank=0, world_size=1, progress=False)
    assert report.shards_written == [0, 1]
    return config


def test_prepare_is_resumable_and_skips_finished_shards(world, tmp_path):
    root, raw = world
    raw = json.loads(json.dumps(raw))
    raw["data"]["cache_dir"] = str(tmp_path / "cache")
    config = config_from_dict(raw, base_dir=root)
    first = prepare_cache(config, rank=0, world_size=1, progress=False, max_shards=1)  # "killed" after one shard
    assert first.shards_written == [0]
    assert sorted(p.name for p in (tmp_path / "cache").glob("shard-*")) == [shard_name(0)]
    stamp = (tmp_path / "cache" / shard_name(0)).stat().st_mtime_ns
    second = prepare_cache(config, rank=0, world_size=1, progress=False)
    assert (second.shards_written, second.shards_skipped) == ([1], [0])
    assert (tmp_path / "cache" / shard_name(0)).stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "cache" / CACHE_INDEX).read_text())["num_samples"] == NUM_SAMPLES


def test_prepare_splits_shards_between_processes(world, tmp_path):
    root, raw = world
    raw = json.loads(json.dumps(raw))
    raw["data"]["cache_dir"] = str(tmp_path / "cache")
    config = config_from_dict(raw, base_dir=root)
    assert prepare_cache(config, rank=1, world_size=2, progress=False).shards_written == [1]
    assert prepare_cache(config, rank=0, world_size=2, progress=False).shards_written == [0]


def test_cached_sample_holds_all_layers_masks_and_latents(prepared):
    from dla_core.train.data import CachedFeatureDataset

    dataset = CachedFeatureDataset(prepared.data.cache_dir)
    item = dataset[NUM_SAMPLES - 1]
    layers, tokens, width = item["hidden_states"].shape
    assert (layers, width) == (dataset.feature_meta["num_layers"], dataset.feature_meta["width"])
    assert item["image_mask"].any() and item["text_mask"].any() and not (item["image_mask"] & item["text_mask"]).any()
    assert item["target"].shape == (16, 4, 4)  # 32 px / 8
    assert [tuple(r.shape) for r in item["references"]] == [(16, 4, 4), (16, 4, 2)]  # 48x40 -> 32x32; 32x64 -> 16x32
    assert item["prompt"] == f"subject {NUM_SAMPLES - 1} in a new scene"


def test_changed_settings_refuse_to_mix_into_an_existing_cache(world, prepared):
    from dla_core.errors import DLAInputError

    root, raw = world
    raw = json.loads(json.dumps(raw))
    raw["data"]["resolution"] = 48
    with pytest.raises(DLAInputError, match="other settings"):
        prepare_cache(config_from_dict(raw, base_dir=root), rank=0, world_size=1, progress=False)


@pytest.fixture(scope="module")
def full_run(prepared, world):
    from dla_core.train.trainer import train

    config = _config(world, output_dir=str(world[0] / "full"))
    return config, train(config)


def test_loss_falls_over_both_stages(full_run):
    config, result = full_run
    losses, k = result.losses, 8
    assert len(losses) == 40
    stage1, stage2 = losses[:20], losses[20:]
    first = sum(stage1[:k]) / k
    assert sum(stage1[-k:]) / k < 0.97 * first
    assert sum(stage2[-k:]) / k < 0.97 * first


def test_loss_csv_has_one_row_per_step_with_stage(full_run):
    from dla_train_helpers import read_loss_csv

    config, result = full_run
    rows = read_loss_csv(Path(config.train.output_dir) / "loss.csv")
    assert [r[0] for r in rows] == list(range(1, 41))
    assert [r[1] for r in rows] == [1] * 20 + [2] * 20
    assert np.allclose([r[2] for r in rows], result.losses, rtol=1e-6)


def test_resumed_run_reproduces_the_uninterrupted_loss_curve(prepared, world):
    from dla_core.train.trainer import train

    steps = dict(stage1_steps=3, stage2_steps=3)
    straight = train(_config(world, output_dir=str(world[0] / "straight"), **steps), export=False)
    split_config = _config(world, output_dir=str(world[0] / "split"), **steps)
    first = train(split_config, stop_at_step=4, export=False)  # stops inside stage 2
    second = train(split_config, resume="latest", export=False)
    assert (first.end_step, second.start_step, second.end_step) == (4, 4, 6)
    assert np.allclose(first.losses + second.losses, straight.losses, rtol=1e-6, atol=1e-7)


def test_resume_mid_epoch_reproduces_the_uninterrupted_loss_curve(prepared, world):
    """Stop where the data stream is inside an epoch (step 5 of batch 2 over 4 samples: sample 2 of epoch 2), so a
    data order that restarts the epoch (or ignores the position within it) on resume changes the losses."""
    from dla_core.train.trainer import train

    steps = dict(stage1_steps=3, stage2_steps=4)
    straight = train(_config(world, output_dir=str(world[0] / "straight_mid"), **steps), export=False)
    split_config = _config(world, output_dir=str(world[0] / "split_mid"), **steps)
    first = train(split_config, stop_at_step=5, export=False)
    assert (5 * 2) % NUM_SAMPLES != 0  # the checkpoint is mid-epoch
    second = train(split_config, resume="latest", export=False)
    assert (first.end_step, second.start_step, second.end_step) == (5, 5, 7)
    assert np.allclose(first.losses + second.losses, straight.losses, rtol=1e-6, atol=1e-7)


def test_export_writes_a_dla_and_lora_that_reload_identically(full_run):
    from safetensors import safe_open

    from dla_core.checkpoint import load_dla
    from dla_core.flux.weights import load_flux_transformer
    from dla_core.train.export import DLA_FILE, LORA_FILE

    config, result = full_run
    export_dir = result.export_dir
    dla = load_dla(export_dir / DLA_FILE)
    assert dla.config.extra["training"]["stage1_steps"] == 20
    with safe_open(str(export_dir / LORA_FILE), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    assert any(".attn.add_q_proj.lora_B." in k for k in keys) and any(".attn.to_out.0.lora_A." in k for k in keys)
    # The trained DLA's null sequence moved away from its zero init (condition dropout trained it).
    assert dla.null_tokens.abs().sum() > 0
    # H4's pipeline loads both files; its LoRA'd transformer reproduces the trained one.
    from dla_core.pipeline import DLASubjectPipeline
    from dla_core.train.trainer import add_lora

    pipe = DLASubjectPipeline.from_pretrained(
        config.model.flux,
        config.model.vae,
        config.model.mllm,
        export_dir / DLA_FILE,
        lora=export_dir / LORA_FILE,
        dtype=torch.float32,
    )
    trained = load_flux_transformer(config.model.flux)
    add_lora(trained, config)
    state = {
        k[len("transformer.") :]: v for k, v in safe_open_all(result.output_dir).items() if k.startswith("transformer.")
    }
    trained.load_state_dict(state, strict=False)
    inputs = _flux_inputs(trained)
    with torch.no_grad():
        assert torch.allclose(
            pipe.transformer(**inputs)[0], trained(**inputs)[0], atol=2e-3, rtol=1e-2
        )  # bf16 LoRA file
    assert torch.equal(pipe.dla.null_tokens, dla.null_tokens)
    image = pipe(
        "subject 0 on the moon",
        [str(Path(config.data.manifest).parent / "ref0.png")],
        height=32,
        width=32,
        num_inference_steps=2,
        progress=False,
    ).images[0]
    assert image.size == (32, 32)


def test_export_command_from_the_last_checkpoint_matches_the_final_export(full_run, tmp_path):
    from safetensors.torch import load_file

    from dla_core.train.__main__ import main as train_main

    config, result = full_run
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    assert train_main(["export", "--config", str(config_file), "--out", str(tmp_path / "export")]) == 0
    for name in ("dla.safetensors", "lora.safetensors"):
        ours, final = load_file(str(tmp_path / "export" / name)), load_file(str(result.export_dir / name))
        assert ours.keys() == final.keys() and all(torch.equal(ours[k], final[k]) for k in ours)


def safe_open_all(output_dir: Path) -> dict:
    from safetensors.torch import load_file

    from dla_core.train.trainer import TRAINABLE_FILE, list_checkpoints

    return load_file(str(list_checkpoints(output_dir)[-1] / TRAINABLE_FILE))


def _flux_inputs(transformer) -> dict:
    generator = torch.Generator().manual_seed(1)
    return dict(
        hidden_states=torch.randn(1, 16, 64, generator=generator),
        encoder_hidden_states=torch.randn(1, 5, 4096, generator=generator),
        pooled_projections=torch.randn(1, 768, generator=generator),
        timestep=torch.tensor([0.7]),
        img_ids=torch.stack(
            torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1
        ).reshape(16, 3),
        txt_ids=torch.zeros(5, 3),
        guidance=torch.tensor([3.5]),
        return_dict=False,
    )


@pytest.mark.parametrize("name", ["train_paper.yaml", "train_tiny.yaml"])
def test_example_configs_are_valid(name):
    from dla_core.train.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
    assert config.total_steps == (35_000 if name == "train_paper.yaml" else 40)


def _export_files(folder: Path) -> dict:
    """name -> (tensors, metadata) of an export folder's DLA and LoRA files."""
    from safetensors import safe_open

    from dla_core.train.export import DLA_FILE, LORA_FILE

    files = {}
    for name in (DLA_FILE, LORA_FILE):
        with safe_open(str(folder / name), framework="pt") as handle:
            files[name] = ({key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata())
    return files


def _assert_same_export(ours: Path, theirs: Path) -> None:
    a, b = _export_files(ours), _export_files(theirs)
    for name in a:
        (tensors, metadata), (other_tensors, other_metadata) = a[name], b[name]
        assert metadata == other_metadata, name
        assert tensors.keys() == other_tensors.keys()
        assert all(torch.equal(tensors[key], other_tensors[key]) for key in tensors), name


def test_export_works_after_the_feature_cache_is_deleted(prepared, world, tmp_path):
    import shutil

    from dla_core.train.__main__ import main as train_main
    from dla_core.train.data import CachedFeatureDataset
    from dla_core.train.export import RUN_FEATURES_FILE
    from dla_core.train.trainer import train

    cache = tmp_path / "cache"
    shutil.copytree(prepared.data.cache_dir, cache)
    root, raw = world
    raw = json.loads(json.dumps(raw))
    raw["data"]["cache_dir"] = str(cache)
    raw["train"].update(output_dir=str(tmp_path / "run"), stage1_steps=1, stage2_steps=1)
    config = config_from_dict(raw, base_dir=root)
    result = train(config)
    stored = json.loads((tmp_path / "run" / RUN_FEATURES_FILE).read_text())
    assert stored == CachedFeatureDataset(cache).feature_meta
    shutil.rmtree(cache)
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    assert train_main(["export", "--config", str(config_file), "--out", str(tmp_path / "export")]) == 0
    _assert_same_export(tmp_path / "export", result.export_dir)


def test_export_of_a_run_from_before_runs_stored_their_features_reads_the_cache(full_run, tmp_path):
    import shutil

    from dla_core.errors import DLAInputError
    from dla_core.train.export import RUN_FEATURES_FILE, export_checkpoint

    config, result = full_run
    old_run = tmp_path / "old_run"
    shutil.copytree(config.train.output_dir, old_run)
    (old_run / RUN_FEATURES_FILE).unlink()
    raw = config.to_dict()
    raw["train"]["output_dir"] = str(old_run)
    export_checkpoint(config_from_dict(raw), None, tmp_path / "export")
    _assert_same_export(tmp_path / "export", result.export_dir)
    raw["data"]["cache_dir"] = str(tmp_path / "deleted_cache")
    with pytest.raises(DLAInputError, match=f"has no {RUN_FEATURES_FILE} .*Prepare the cache again"):
        export_checkpoint(config_from_dict(raw), None, tmp_path / "export_without_cache")


def test_a_cache_from_another_mllm_is_refused_before_training_with_the_inference_message(prepared, tmp_path):
    from dla_core.checkpoint import init_dla, save_dla
    from dla_core.errors import DLACheckpointError
    from dla_core.spec import MLLMSpec
    from dla_core.train.trainer import preflight

    other = save_dla(init_dla(MLLMSpec("qwen2_5_vl", 5, 48), target="flux", seed=0), tmp_path / "other.safetensors")
    raw = prepared.to_dict()
    raw["model"]["init_dla"] = str(other)
    with pytest.raises(
        DLACheckpointError,
        match=r"DLA checkpoint expects 5 layers of width 48 \(qwen2_5_vl\); the MLLM the cache .* was prepared with "
        r"gives \d+ of width \d+ \(internvl\): load the DLA trained for this MLLM",
    ):
        preflight(config_from_dict(raw))
