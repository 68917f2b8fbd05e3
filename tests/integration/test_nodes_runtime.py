"""ComfyUI runtime behaviour: caching, model management, batches."""

from __future__ import annotations

import pytest
import torch
from dla_harness import add_dla_pipeline, add_staged_sampler

pytestmark = pytest.mark.integration


def _encode_graph(graph, **kwargs):
    nodes = add_dla_pipeline(graph, **kwargs)
    graph.add("PreviewAny", source=graph.out(nodes.positive))
    graph.add("PreviewAny", source=graph.out(nodes.identity))
    return nodes


def test_requeued_prompt_runs_no_mllm_forward(comfy, graph):
    nodes = add_dla_pipeline(graph, prompt_text="a cat")
    sampled = add_staged_sampler(graph, nodes, steps=1)
    graph.add("SaveLatent", samples=graph.out(sampled), filename_prefix="latents/dla_requeue")
    assert comfy.run(graph.prompt).success
    mllm = comfy.output(nodes.mllm).loaded
    calls = mllm.forward_calls
    assert calls >= 1
    again = comfy.run(graph.prompt)
    assert again.success
    assert mllm.forward_calls == calls
    graph.prompt[sampled]["inputs"]["seed"] = 8  # only the sampler changes: it runs, the MLLM does not
    reseeded = comfy.run(graph.prompt)
    assert reseeded.success, reseeded.error_text
    assert mllm.forward_calls == calls


def test_mllm_is_a_managed_model_that_unload_all_models_frees(comfy, graph):
    import comfy.model_management as model_management

    nodes = _encode_graph(graph, prompt_text="a red car")
    assert comfy.run(graph.prompt).success
    patcher = comfy.output(nodes.mllm).patcher
    assert any(loaded.model is patcher for loaded in model_management.current_loaded_models)
    model_management.unload_all_models()
    assert not any(loaded.model is patcher for loaded in model_management.current_loaded_models)
    graph.prompt[nodes.features]["inputs"]["prompt"] = "a blue car"  # encodes again after being freed
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    assert any(loaded.model is patcher for loaded in model_management.current_loaded_models)


def test_free_memory_request_unloads_the_mllm(comfy, graph):
    import comfy.model_management as model_management

    nodes = _encode_graph(graph, prompt_text="a green car")
    assert comfy.run(graph.prompt).success
    patcher = comfy.output(nodes.mllm).patcher
    model_management.free_memory(1e30, patcher.load_device)
    assert not any(loaded.model is patcher for loaded in model_management.current_loaded_models)


def test_image_batch_items_are_all_references(comfy, graph):
    nodes = _encode_graph(graph, prompt_text="a toy")
    single = comfy.run(graph.prompt)
    assert single.success
    tokens_one = comfy.output(nodes.positive)[0][0].shape[1]
    image_tokens_one = comfy.output(nodes.features).extra["image_token_counts"][0]
    batch = graph.add("RepeatImageBatch", image=graph.out(nodes.image), amount=2)
    graph.prompt[nodes.features]["inputs"]["image"] = graph.out(batch)
    graph.prompt[nodes.identity]["inputs"]["image"] = graph.out(batch)
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    features = comfy.output(nodes.features)
    assert features.batch_size == 1 and features.extra["references_per_prompt"] == [2]
    assert features.extra["image_token_counts"][0] == 2 * image_tokens_one
    assert comfy.output(nodes.positive)[0][0].shape[1] > tokens_one
    identity = comfy.output(nodes.identity)
    assert len(identity.latents) == 2 and all(latent.shape == (1, 16, 8, 8) for latent in identity.latents)


def test_latent_batch_is_sampled_whole_with_per_item_noise(comfy, graph):
    nodes = add_dla_pipeline(graph, prompt_text="a cat", batch_size=2)
    sampled = add_staged_sampler(graph, nodes, steps=1)
    graph.add("SaveLatent", samples=graph.out(sampled), filename_prefix="latents/dla_batch")
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    samples = comfy.output(sampled)["samples"]
    assert samples.shape == (2, 16, 8, 8)
    assert torch.isfinite(samples).all()
    assert not torch.allclose(samples[0], samples[1])
