"""Bad input to the Krea 2 nodes inside ComfyUI's own executor: one clear node error each, then ComfyUI keeps serving.

Runs on both rows: the graphs use the shared tiny FLUX.1 pipeline (tests/lib/dla_harness), so the wrong model is
there on 0.3.64 too; there the Krea 2 Layer Map's error is the one-line "needs a newer ComfyUI" notice.
"""

from __future__ import annotations

import pytest
from dla_harness import add_dla_pipeline, add_staged_sampler, pack_module

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KREA2_DLA = "krea2_identity_bad_inputs.safetensors"


@pytest.fixture(scope="module")
def krea2_dla(comfy) -> str:
    """A krea2 identity DLA (init-dla, real widths, no blocks) in the server's dla folder."""
    path = comfy.base_dir / "extra_dla" / KREA2_DLA  # extra_model_paths.yaml's dla folder
    if not path.exists():
        args = ["init-dla", "--target", "krea2", "--init", "identity", "--lap-blocks", "0", "--out", str(path)]
        assert pack_module("dla_core.cli").main(args) == 0
    return KREA2_DLA


def _preview(graph, nodes, sampler: str) -> None:
    decoded = graph.add("VAEDecode", samples=graph.out(sampler), vae=graph.out(nodes.vae))
    graph.add("PreviewImage", images=graph.out(decoded))


def _then_the_pipeline_still_runs(comfy, graph_factory):
    graph = graph_factory()
    nodes = add_dla_pipeline(graph)
    _preview(graph, nodes, add_staged_sampler(graph, nodes))
    good = comfy.run(graph.prompt)
    assert good.success, good.error_text


def test_a_krea2_dla_on_a_flux_model_is_one_clear_node_error(comfy, graph, krea2_dla):
    nodes = add_dla_pipeline(graph)
    graph.prompt[nodes.dla]["inputs"]["dla_name"] = krea2_dla
    graph.prompt[nodes.positive]["inputs"]["model"] = graph.out(nodes.model)  # the optional model-fit check
    _preview(graph, nodes, add_staged_sampler(graph, nodes))
    bad = comfy.run(graph.prompt)
    assert not bad.success
    assert "This DLA is for target 'krea2' (Krea 2" in bad.error_text and "reads 4096-wide tokens" in bad.error_text
    _then_the_pipeline_still_runs(comfy, type(graph))


def test_the_krea2_layer_map_on_a_flux_model_is_one_clear_node_error(comfy, graph):
    nodes = add_dla_pipeline(graph)
    layer_map = graph.add(
        "DLAKrea2LayerMap", model=graph.out(nodes.model), mllm_features=graph.out(nodes.features), width=256, height=256
    )
    graph.add("PreviewImage", images=graph.out(layer_map))
    bad = comfy.run(graph.prompt)
    assert not bad.success
    if pack_module("nodes.compat").comfy_has_krea2():
        assert "not Krea 2's DiT" in bad.error_text and "Load Diffusion Model" in bad.error_text
    else:
        assert "Krea 2 needs a newer ComfyUI" in bad.error_text
    _then_the_pipeline_still_runs(comfy, type(graph))
