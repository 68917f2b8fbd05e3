"""Layer Map (DLA) in the real ComfyUI on the tiny models: the picture and summary dla_core draws, clean errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dla_harness import Graph, add_dla_pipeline, pack_module

pytestmark = pytest.mark.integration


def add_layer_map(graph: Graph, dla_name: str | None = None, width: int = 320, height: int = 240, **pipeline):
    """Joint encode + DLA Loader + Layer Map, its picture previewed and its summary shown; returns (nodes, map id)."""
    nodes = (
        add_dla_pipeline(graph, **pipeline)
        if dla_name is None
        else add_dla_pipeline(graph, dla_name=dla_name, **pipeline)
    )
    layer_map = graph.add(
        "DLALayerMap", dla=graph.out(nodes.dla), mllm_features=graph.out(nodes.features), width=width, height=height
    )
    graph.add("PreviewImage", images=graph.out(layer_map, 0))
    graph.add("PreviewAny", source=graph.out(layer_map, 1))
    return nodes, layer_map


def test_layer_map_node_gives_the_picture_and_summary_of_dla_core(comfy, graph, tiny_models_dir, tiny_names):
    nodes, layer_map = add_layer_map(graph, prompt_text="a dog on a beach")
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    image, summary = comfy.output(layer_map, 0), comfy.output(layer_map, 1)
    assert image.shape == (1, 240, 320, 3) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    # The same map computed by dla_core (the copy ComfyUI loaded: its MLLMFeatures class) from the node's
    # own features and the checkpoint file.
    core = pack_module("dla_core.layer_map")
    dla = pack_module("dla_core.checkpoint").load_dla(tiny_models_dir / "dla" / tiny_names.dla, dtype=torch.float32)
    expected_map = core.layer_attention(dla, comfy.output(nodes.features), title=tiny_names.dla)
    expected = core.plot_layer_map(expected_map, 320, 240)
    assert np.array_equal(np.round(image[0].cpu().numpy() * 255).astype(np.uint8), expected)
    assert summary == core.summarize(expected_map)
    assert summary.startswith(f"{tiny_names.dla}: Share of the DLA's output drawn from each MLLM layer")
    for kind in ("text", "image"):
        shares = expected_map.shares[kind]
        assert shares is not None and torch.allclose(shares.sum(), torch.tensor(1.0), atol=1e-6)
        assert expected_map.tokens[kind] > 0
        assert np.any((expected == np.array(core.KIND_COLOURS[kind], dtype=np.uint8)).all(-1)), f"no {kind} bars"


def test_layer_map_with_a_dla_for_another_mllm_is_one_node_error_then_a_good_prompt_runs(comfy, tiny_names):
    graph = Graph()
    _, layer_map = add_layer_map(graph, dla_name=tiny_names.dla_other_mllm)
    result = comfy.run(graph.prompt)
    assert result.valid and not result.success
    error = result.execution_error
    assert error["node_id"] == layer_map and error["node_type"] == "DLALayerMap"
    message = error["exception_message"]
    assert "qwen2_5_vl" in message and "internvl" in message
    assert "load the DLA trained for this MLLM" in message
    good = Graph()
    _, good_map = add_layer_map(good, prompt_text="a good prompt")
    again = comfy.run(good.prompt)
    assert again.success, again.error_text
    assert comfy.output(good_map, 0).shape == (1, 240, 320, 3)


def test_cancel_while_the_layer_map_runs_stops_it_at_the_next_lap_block(comfy, tiny_names):
    """Cancel pressed while the map's first LAP block runs: the node stops before the next block with ComfyUI's
    interrupt (execution_interrupted, not an error), and the next prompt runs."""
    import importlib

    model_management = importlib.import_module("comfy.model_management")
    graph = Graph()
    nodes, layer_map = add_layer_map(graph, prompt_text="warm the DLA loader")
    assert comfy.run(graph.prompt).success
    dla = comfy.output(nodes.dla).module  # the cached DLA the next run uses
    blocks = [*dla.lap_text.blocks, *dla.lap_image.blocks]
    assert len(blocks) >= 2
    ran = []

    def block_started(*_):  # the block's first layer norm: the block is running
        ran.append(1)
        if len(ran) == 1:
            model_management.interrupt_current_processing(True)

    handles = [block.attn_norm.register_forward_hook(block_started) for block in blocks]
    try:
        graph.prompt[nodes.features]["inputs"]["prompt"] = "cancelled while mapping"
        result = comfy.run(graph.prompt)
    finally:
        for handle in handles:
            handle.remove()
        model_management.interrupt_current_processing(False)
    assert result.valid and not result.success
    assert result.execution_error is None  # Cancel is not an error
    assert result.interrupted_node == layer_map
    assert len(ran) == 1  # the remaining LAP blocks never ran
    graph.prompt[nodes.features]["inputs"]["prompt"] = "a good prompt after the cancel"
    assert comfy.run(graph.prompt).success
