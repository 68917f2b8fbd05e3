"""DLA checkpoints: bit-exact safetensors round trip, header-only config, refusals with clear messages."""

import json

import pytest
import torch
from safetensors.torch import save_file

from dla_core.checkpoint import FORMAT_NAME, init_dla, load_dla, read_dla_config, save_dla
from dla_core.errors import DLACheckpointError, DLAInputError
from dla_core.spec import MLLMSpec

SPEC = MLLMSpec(family="internvl", num_layers=4, width=32, name="tiny-internvl")
SMALL = dict(lap_width=16, lap_mlp_hidden=32)


def tiny_dla(**overrides):
    settings = dict(SMALL)
    settings.update(overrides)
    return init_dla(SPEC, **settings)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name


def test_round_trip_is_bit_exact_including_config(tmp_path):
    dla = tiny_dla(seed=3)
    with torch.no_grad():
        dla.null_tokens.normal_()  # a "trained" null must survive too
    path = save_dla(dla, tmp_path / "dla.safetensors")
    loaded = load_dla(path)
    assert_same_weights(dla, loaded)
    assert loaded.config == dla.config


def test_round_trip_keeps_bf16_weights_bit_exact(tmp_path):
    dla = tiny_dla().to(torch.bfloat16)
    loaded = load_dla(save_dla(dla, tmp_path / "dla.safetensors"))
    assert_same_weights(dla, loaded)


def test_load_casts_to_the_requested_dtype(tmp_path):
    loaded = load_dla(save_dla(tiny_dla(), tmp_path / "dla.safetensors"), dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def test_loaded_dla_is_frozen_and_in_eval_mode(tmp_path):
    loaded = load_dla(save_dla(tiny_dla(), tmp_path / "dla.safetensors"))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_metadata_holds_format_version_and_full_config(tmp_path):
    from safetensors import safe_open

    dla = tiny_dla()
    path = save_dla(dla, tmp_path / "dla.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == FORMAT_NAME and metadata["format_version"] == "1"
    assert json.loads(metadata["config"]) == dla.config.to_dict()


def test_read_dla_config_returns_the_saved_config(tmp_path):
    dla = tiny_dla(target="qwen_image")
    assert read_dla_config(save_dla(dla, tmp_path / "dla.safetensors")) == dla.config


def test_read_dla_config_never_loads_tensors(tmp_path, monkeypatch):
    import safetensors.torch

    path = save_dla(tiny_dla(), tmp_path / "dla.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("read_dla_config loaded tensors")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors.torch, "safe_open", refuse)
    assert read_dla_config(path).num_layers == 4


def test_same_seed_gives_identical_weights():
    assert_same_weights(tiny_dla(seed=5), tiny_dla(seed=5))


def test_different_seeds_give_different_weights():
    assert not torch.equal(tiny_dla(seed=5).lap_text.pool_fc.weight, tiny_dla(seed=6).lap_text.pool_fc.weight)


def test_init_dla_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_dla(seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_init_dla_takes_widths_from_the_spec_and_the_target():
    dla = init_dla(SPEC, target="flux")
    assert (dla.config.num_layers, dla.config.mllm_width, dla.config.lap_width) == (4, 32, 32)
    assert (dla.config.context_width, dla.config.pooled_width) == (4096, 768)
    assert dla.config.mllm_name == "tiny-internvl"


def test_identity_init_dla_uses_the_mllm_width_and_no_input_norm():
    dla = init_dla(SPEC, init="identity", identity_layer=2)
    assert dla.config.lap_width == 32 and not dla.config.lap_input_norm and dla.config.identity_layer == 2


def test_unknown_target_is_refused():
    with pytest.raises(DLAInputError, match="Unknown target 'sdxl'"):
        init_dla(SPEC, target="sdxl")


def test_unknown_override_is_refused():
    with pytest.raises(DLAInputError, match="unknown DLA setting"):
        init_dla(SPEC, lap_depth=3)


def test_pickle_files_are_refused_without_being_opened(tmp_path):
    path = tmp_path / "dla.pt"
    path.write_bytes(b"not even read")
    with pytest.raises(DLACheckpointError, match=r"'dla.pt' is a pickle-based file \(.pt\); .*only from .safetensors"):
        load_dla(path)


def test_missing_file_is_refused_with_where_to_put_it(tmp_path):
    with pytest.raises(
        DLACheckpointError, match=r"does not exist. Put the .safetensors file under ComfyUI/models/dla/"
    ):
        load_dla(tmp_path / "absent.safetensors")


def test_garbage_file_is_refused_as_corrupt(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x00" * 3 + b"this is not a safetensors file" * 10)
    with pytest.raises(DLACheckpointError, match="'garbage.safetensors' is corrupt or not a safetensors file"):
        load_dla(path)


def test_truncated_file_is_refused(tmp_path):
    path = save_dla(tiny_dla(), tmp_path / "dla.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(DLACheckpointError, match=r"'dla.safetensors' is truncated .*init-dla"):
        load_dla(path)


def test_safetensors_without_dla_metadata_is_refused(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(DLACheckpointError, match="'lora.safetensors' is a safetensors file but not a DLA checkpoint"):
        load_dla(path)


def _rewrite(path, tensors=None, metadata_update=None):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    metadata.update(metadata_update or {})
    save_file(tensors if tensors is not None else load_file(str(path)), str(path), metadata=metadata)


def test_unknown_format_version_is_refused(tmp_path):
    path = save_dla(tiny_dla(), tmp_path / "dla.safetensors")
    _rewrite(path, metadata_update={"format_version": "7"})
    with pytest.raises(DLACheckpointError, match="format version '7'; this pack reads version 1. Update the pack"):
        load_dla(path)


def test_unknown_config_version_is_refused(tmp_path):
    dla = tiny_dla()
    path = save_dla(dla, tmp_path / "dla.safetensors")
    config = dla.config.to_dict()
    config["version"] = 2
    _rewrite(path, metadata_update={"config": json.dumps(config)})
    with pytest.raises(DLACheckpointError, match="'dla.safetensors': DLA config version 2 is not supported"):
        read_dla_config(path)


def test_missing_tensor_is_refused(tmp_path):
    dla = tiny_dla()
    path = save_dla(dla, tmp_path / "dla.safetensors")
    tensors = {k: v.contiguous() for k, v in dla.state_dict().items() if k != "null_tokens"}
    _rewrite(path, tensors=tensors)
    with pytest.raises(DLACheckpointError, match=r"missing tensors \['null_tokens'\], unexpected tensors \[\]"):
        load_dla(path)


def test_extra_tensor_is_refused(tmp_path):
    dla = tiny_dla()
    path = save_dla(dla, tmp_path / "dla.safetensors")
    tensors = {k: v.contiguous() for k, v in dla.state_dict().items()}
    tensors["lora_up"] = torch.zeros(2)
    _rewrite(path, tensors=tensors)
    with pytest.raises(DLACheckpointError, match=r"unexpected tensors \['lora_up'\]"):
        load_dla(path)


def test_wrong_tensor_shape_is_refused(tmp_path):
    dla = tiny_dla()
    path = save_dla(dla, tmp_path / "dla.safetensors")
    tensors = {k: v.contiguous() for k, v in dla.state_dict().items()}
    tensors["null_tokens"] = torch.zeros(3, 4096)
    _rewrite(path, tensors=tensors)
    with pytest.raises(DLACheckpointError, match=r"wrong shape \(null_tokens \(3, 4096\) != \(16, 4096\)\)"):
        load_dla(path)


def test_loaded_checkpoint_refuses_a_different_mllm(tmp_path):
    loaded = load_dla(save_dla(tiny_dla(), tmp_path / "dla.safetensors"))
    with pytest.raises(
        DLACheckpointError,
        match=r"expects 4 layers of width 32 \(internvl\); the connected MLLM gives 29 of width 3584 \(qwen2_5_vl\)",
    ):
        loaded.check_compatible(MLLMSpec("qwen2_5_vl", 29, 3584))


def test_saving_to_a_non_safetensors_name_is_refused(tmp_path):
    with pytest.raises(DLAInputError, match="Use a name ending in .safetensors"):
        save_dla(tiny_dla(), tmp_path / "dla.pt")


def test_sequence_fusion_survives_the_checkpoint_round_trip(tmp_path):
    dla = tiny_dla(fuse="sequence")
    loaded = load_dla(save_dla(dla, tmp_path / "sequence.safetensors"))
    assert loaded.config.fuse == "sequence"
    assert read_dla_config(tmp_path / "sequence.safetensors").fuse == "sequence"
