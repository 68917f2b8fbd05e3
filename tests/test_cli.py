"""Command line: ``python -m dla_core init-dla`` / ``inspect``, clean errors, lazy subcommands."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dla_core.checkpoint import load_dla, read_dla_config
from dla_core.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def mllm_folder(tmp_path):
    """A folder with only a config.json: init-dla must not need more."""
    folder = tmp_path / "InternVL3-tiny-hf"
    folder.mkdir()
    config = {"model_type": "internvl", "text_config": {"hidden_size": 32, "num_hidden_layers": 3}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_help_lists_every_registered_command():
    result = subprocess.run(
        [sys.executable, "-m", "dla_core", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    for name, _, _ in COMMANDS:
        assert name in result.stdout


def test_subcommand_help_shows_its_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["init-dla", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--mllm" in out and "--identity-layer" in out and "--out" in out


def test_init_dla_writes_a_checkpoint_for_the_mllm_in_the_folder(mllm_folder, tmp_path, capsys):
    out = tmp_path / "dla.safetensors"
    assert main(["init-dla", "--mllm", str(mllm_folder), "--target", "flux", "--out", str(out)]) == 0
    config = read_dla_config(out)
    assert (config.mllm_family, config.num_layers, config.mllm_width) == ("internvl", 4, 32)
    assert (config.target, config.context_width, config.pooled_width, config.init) == ("flux", 4096, 768, "random")
    assert config.mllm_name == "InternVL3-tiny-hf"
    assert "wrote" in capsys.readouterr().out


def test_init_dla_with_the_same_seed_is_reproducible(mllm_folder, tmp_path):
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for path in paths:
        main(["init-dla", "--mllm", str(mllm_folder), "--seed", "4", "--out", str(path)])
    a, b = (load_dla(p).state_dict() for p in paths)
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_init_dla_identity_for_qwen_image_records_its_settings(mllm_folder, tmp_path):
    out = tmp_path / "dla.safetensors"
    main(
        [
            "init-dla",
            "--mllm",
            str(mllm_folder),
            "--target",
            "qwen_image",
            "--init",
            "identity",
            "--identity-layer",
            "2",
            "--out",
            str(out),
        ]
    )
    config = read_dla_config(out)
    assert (config.init, config.identity_layer, config.lap_width, config.pooled_width) == ("identity", 2, 32, 0)


def test_init_dla_fuse_sequence_is_recorded(mllm_folder, tmp_path):
    out = tmp_path / "dla.safetensors"
    assert (
        main(
            [
                "init-dla",
                "--mllm",
                str(mllm_folder),
                "--target",
                "qwen_image",
                "--init",
                "identity",
                "--fuse",
                "sequence",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert read_dla_config(out).fuse == "sequence"


def test_inspect_prints_config_tensor_count_and_parameters(mllm_folder, tmp_path, capsys):
    out = tmp_path / "dla.safetensors"
    main(["init-dla", "--mllm", str(mllm_folder), "--out", str(out)])
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    dla = load_dla(out)
    assert f"parameters: {dla.num_parameters():,}" in printed
    assert f"tensors: {len(dla.state_dict())} (F32)" in printed
    assert "num_layers: 4" in printed and "mllm_family: internvl" in printed


def test_bad_identity_layer_exits_2_with_one_clean_line(mllm_folder, tmp_path, capsys):
    code = main(
        [
            "init-dla",
            "--mllm",
            str(mllm_folder),
            "--init",
            "identity",
            "--identity-layer",
            "9",
            "--out",
            str(tmp_path / "x.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: identity_layer 9 is out of range") and err.count("\n") == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_missing_mllm_folder_exits_2(tmp_path, capsys):
    assert main(["init-dla", "--mllm", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_inspecting_a_pickle_file_exits_2_without_a_traceback(tmp_path):
    path = tmp_path / "dla.ckpt"
    path.write_bytes(b"\x80\x04K\x01.")
    result = subprocess.run(
        [sys.executable, "-m", "dla_core", "inspect", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "error: 'dla.ckpt' is a pickle-based file (.ckpt); this pack loads DLA weights only from .safetensors because "
        "unpickling can run arbitrary code. Use the .safetensors version of the checkpoint."
    )


def test_unknown_target_is_rejected_by_the_parser(mllm_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["init-dla", "--mllm", str(mllm_folder), "--target", "sdxl", "--out", str(tmp_path / "x.safetensors")])
    assert info.value.code == 2
    assert "invalid choice: 'sdxl'" in capsys.readouterr().err


def test_init_dla_on_a_tiny_internvl_folder_aggregates_its_real_features(
    tiny_internvl_dir, tiny_internvl, make_reference, tmp_path
):
    from dla_core.mllm import encode_joint

    out = tmp_path / "dla.safetensors"
    assert main(["init-dla", "--mllm", str(tiny_internvl_dir), "--init", "identity", "--out", str(out)]) == 0
    dla = load_dla(out)
    features = encode_joint(
        tiny_internvl, ["a red cat on a sofa", "the dog"], [make_reference(), make_reference(seed=1)]
    )
    with torch.no_grad():
        conditioning = dla(features)
    width = features.width
    for sample in range(2):
        text = features.hidden_states[sample, -1][features.text_mask[sample]]
        image = features.hidden_states[sample, -1][features.image_mask[sample]]
        expected = torch.cat([text, image])  # [valid tokens, width]: identity init = last layer, text first
        assert int(conditioning.token_mask[sample].sum()) == len(expected)
        assert torch.equal(conditioning.tokens[sample, : len(expected), :width], expected.float())
