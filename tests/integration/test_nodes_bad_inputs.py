"""Bad input gives a node error that says what to do, and the next prompt still runs."""

from __future__ import annotations

import pytest
from dla_harness import Graph, add_dla_pipeline, add_staged_sampler

pytestmark = pytest.mark.integration


@pytest.fixture
def encode_graph():
    """A graph up to Dual Layer Aggregation (+ identity), previewed; returns (graph, nodes)."""

    def build(**kwargs):
        graph = Graph()
        nodes = add_dla_pipeline(graph, **kwargs)
        graph.add("PreviewAny", source=graph.out(nodes.positive))
        graph.add("PreviewAny", source=graph.out(nodes.identity))
        return graph, nodes

    return build


@pytest.fixture
def then_next_prompt_runs(comfy, encode_graph):
    """Call after a failing prompt: a good prompt must succeed in the same ComfyUI."""

    def check():
        graph, _ = encode_graph(prompt_text="a good prompt")
        result = comfy.run(graph.prompt)
        assert result.success, result.error_text

    return check


def _failed_at(result, node_id):
    assert result.valid and not result.success
    assert result.execution_error["node_id"] == node_id
    return result.execution_error["exception_message"]


def _rejected_at(result, node_id):
    assert not result.valid
    assert node_id in result.node_errors
    return result.error_text


def test_dla_for_another_mllm_family_says_to_load_the_matching_dla(
    comfy, encode_graph, tiny_names, then_next_prompt_runs
):
    graph, nodes = encode_graph(dla_name=tiny_names.dla_other_mllm)
    message = _failed_at(comfy.run(graph.prompt), nodes.positive)
    assert "qwen2_5_vl" in message and "internvl" in message
    assert "load the DLA trained for this MLLM" in message
    then_next_prompt_runs()


def test_dla_width_mismatch_names_both_widths(comfy, encode_graph, tiny_names, then_next_prompt_runs):
    graph, nodes = encode_graph(dla_name=tiny_names.dla_other_width)
    message = _failed_at(comfy.run(graph.prompt), nodes.positive)
    assert "width 64" in message and "width 32" in message
    then_next_prompt_runs()


def test_empty_prompt_asks_for_an_instruction(comfy, encode_graph, then_next_prompt_runs):
    graph, nodes = encode_graph(prompt_text="   ")
    message = _failed_at(comfy.run(graph.prompt), nodes.features)
    assert "prompt is empty" in message
    then_next_prompt_runs()


def test_reference_with_alpha_asks_to_composite_it(comfy, encode_graph, then_next_prompt_runs):
    graph, nodes = encode_graph()
    mask = graph.add("SolidMask", value=1.0, width=64, height=64)
    rgba = graph.add("JoinImageWithAlpha", image=graph.out(nodes.image), alpha=graph.out(mask))
    graph.prompt[nodes.features]["inputs"]["image"] = graph.out(rgba)
    message = _failed_at(comfy.run(graph.prompt), nodes.features)
    assert "alpha" in message and "RGB" in message
    then_next_prompt_runs()


def test_tau1_below_tau2_is_rejected_before_running(comfy, then_next_prompt_runs):
    graph = Graph()
    nodes = add_dla_pipeline(graph)
    sampler = add_staged_sampler(graph, nodes, tau1=0.5, tau2=0.8)
    graph.add("SaveLatent", samples=graph.out(sampler), filename_prefix="latents/dla_bad")
    text = _rejected_at(comfy.run(graph.prompt), sampler)
    assert "tau2 no larger than tau1" in text
    then_next_prompt_runs()


def test_zero_steps_is_rejected_before_running(comfy):
    graph = Graph()
    nodes = add_dla_pipeline(graph)
    sampler = add_staged_sampler(graph, nodes, steps=0)
    graph.add("SaveLatent", samples=graph.out(sampler), filename_prefix="latents/dla_bad")
    text = _rejected_at(comfy.run(graph.prompt), sampler)
    assert "steps" in text


def test_wrong_socket_type_is_rejected_before_running(comfy, encode_graph):
    graph, nodes = encode_graph()
    graph.prompt[nodes.positive]["inputs"]["mllm_features"] = graph.out(nodes.dla)  # a DLA where features belong
    assert nodes.positive in comfy.run(graph.prompt).node_errors


def test_wrong_object_in_a_socket_says_which_node_to_connect(comfy):
    node = comfy.nodes.NODE_CLASS_MAPPINGS["DLAAggregate"]
    with pytest.raises(ValueError, match="Connect the output of DLA Loader"):
        node.execute(dla="not a DLA", mllm_features=None, guidance=2.5)


def test_missing_mllm_folder_names_the_searched_folders(comfy):
    node = comfy.nodes.NODE_CLASS_MAPPINGS["DLAMLLMLoader"]
    with pytest.raises(ValueError, match=r"MLLM folder 'InternVL3-8B-hf' was not found in .*models/mllm"):
        node.execute(mllm_name="InternVL3-8B-hf", dtype="auto", device="default")


def test_missing_dla_file_names_the_folder_and_init_dla(comfy):
    node = comfy.nodes.NODE_CLASS_MAPPINGS["DLALoader"]
    with pytest.raises(ValueError, match=r"not found in .*models/dla.*init-dla"):
        node.execute(dla_name="missing.safetensors")
