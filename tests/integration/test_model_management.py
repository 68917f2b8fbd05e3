"""The MLLM and the DLA under ComfyUI's model management: always whole on one device (both ComfyUI versions).

ComfyUI may load a model partially (``lowvram``; newer ComfyUI also has dynamic VRAM on by
default): modules that do not fit stay on the offload device and only ComfyUI's own layers can be
cast on the fly, so a Hugging Face model would end up split across devices. The pack's patcher
loads and unloads whole. On this CPU machine load and offload device are the same, so the split is
observed through ComfyUI's own bookkeeping (``model_loaded_weight_memory``, ``model_lowvram``).
"""

from __future__ import annotations

import pytest
import torch
from dla_harness import add_dla_pipeline, pack_module

pytestmark = [pytest.mark.integration]


def _module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 64), torch.nn.LayerNorm(64)
    )


def test_a_low_memory_load_still_loads_the_whole_model(comfy):
    import comfy.model_patcher

    cpu = torch.device("cpu")
    ours = pack_module("nodes.managed_models").WholeModelPatcher(_module(), load_device=cpu, offload_device=cpu)
    ours.load(cpu, lowvram_model_memory=1)
    assert ours.model.model_loaded_weight_memory == ours.model_size() > 0
    assert not ours.model.model_lowvram
    # What the pack used before: a plain ModelPatcher loads only what fits, the rest stays behind.
    plain = comfy.model_patcher.ModelPatcher(_module(), load_device=cpu, offload_device=cpu)
    plain.load(cpu, lowvram_model_memory=1)
    assert plain.model.model_loaded_weight_memory < plain.model_size()


def test_memory_pressure_unloads_whole_never_part(comfy):
    cpu = torch.device("cpu")
    patcher = pack_module("nodes.managed_models").WholeModelPatcher(_module(), load_device=cpu, offload_device=cpu)
    patcher.load(cpu)
    assert patcher.partially_unload(cpu, memory_to_free=1) == 0
    assert patcher.model.model_loaded_weight_memory == patcher.model_size()


@pytest.mark.parametrize(
    "state,policy,expected",
    [
        ("NORMAL_VRAM", "default", "cuda"),
        ("LOW_VRAM", "default", "cpu"),
        ("NO_VRAM", "default", "cpu"),
        ("LOW_VRAM", "gpu", "cuda"),
        ("NORMAL_VRAM", "cpu", "cpu"),
    ],
)
def test_device_policy_respects_lowvram(comfy, monkeypatch, state, policy, expected):
    """Simulated GPU machine: --lowvram/--novram keep the big HF models on the CPU unless 'gpu' is picked."""
    import comfy.model_management as mm

    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(mm, "get_torch_device", lambda: gpu)
    monkeypatch.setattr(mm, "text_encoder_device", lambda: gpu)
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState[state])
    load_device, _ = pack_module("nodes.managed_models").run_devices(policy)
    assert load_device.type == expected


def test_cpu_flag_puts_everything_on_the_cpu(comfy):
    import comfy.model_management as mm

    assert mm.get_torch_device().type == "cpu"  # the suite runs ComfyUI with --cpu
    for policy in ("default", "gpu", "cpu"):
        assert pack_module("nodes.managed_models").run_devices(policy)[0].type == "cpu"


def test_mllm_and_dla_load_whole_then_offload_and_free(comfy, graph):
    """The load / offload / free cycle through the nodes, on this ComfyUI's model management."""
    import comfy.model_management as mm

    nodes = add_dla_pipeline(graph, prompt_text="a managed cat")
    graph.add("PreviewAny", source=graph.out(nodes.positive))
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    patchers = {"mllm": comfy.output(nodes.mllm).patcher, "dla": comfy.output(nodes.dla).patcher}
    for name, patcher in patchers.items():
        assert isinstance(patcher, pack_module("nodes.managed_models").WholeModelPatcher), name
        assert any(loaded.model is patcher for loaded in mm.current_loaded_models), name
        assert patcher.model.model_loaded_weight_memory == patcher.model_size(), name
        assert all(p.device == patcher.load_device for p in patcher.model.parameters()), name
    mm.unload_all_models()
    for name, patcher in patchers.items():
        assert not any(loaded.model is patcher for loaded in mm.current_loaded_models), name
        assert all(p.device == patcher.offload_device for p in patcher.model.parameters()), name
    graph.prompt[nodes.features]["inputs"]["prompt"] = "a managed dog"  # loads again after being freed
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    mm.free_memory(1e30, patchers["mllm"].load_device)
    assert not any(loaded.model is patchers["mllm"] for loaded in mm.current_loaded_models)
