"""The paper's pipeline as a ComfyUI graph, run by ComfyUI's executor on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
from dla_harness import add_dla_pipeline, add_staged_sampler
from PIL import Image

pytestmark = pytest.mark.integration


def test_full_graph_with_lora_saves_an_image(comfy, graph):
    nodes = add_dla_pipeline(graph)
    sampled = add_staged_sampler(graph, nodes)
    decoded = graph.add("VAEDecode", samples=graph.out(sampled), vae=graph.out(nodes.vae))
    save = graph.add("SaveImage", images=graph.out(decoded), filename_prefix="dla_pipeline")
    result = comfy.run(graph.prompt)
    assert result.success, result.error_text
    images = result.history["outputs"][save]["images"]
    assert len(images) == 1
    path = comfy.base_dir / "output" / images[0]["subfolder"] / images[0]["filename"]
    pixels = np.asarray(Image.open(path), dtype=np.float32)
    assert pixels.shape == (64, 64, 3)
    assert pixels.std() > 1.0  # a real picture, not a constant
