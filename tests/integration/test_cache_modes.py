"""Re-queueing with a new seed runs no MLLM forward, under every cache mode of this ComfyUI that users get by default.

ComfyUI 0.3.64 caches classically by default (``--cache-lru N`` is the other choice). Newer ComfyUI
defaults to RAM-pressure eviction (``--cache-ram [GB]``); the MLLM and DLA outputs carry a
``ModelPatcher`` (``.patcher``), which that cache treats as a model. Each mode gets a fresh
executor built the way ``main.py`` builds it.
"""

from __future__ import annotations

import pytest
from dla_harness import ComfyRunner, Graph, add_dla_pipeline, add_staged_sampler

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cache_modes(execution) -> list[tuple[str, str, dict]]:
    names = {member.name for member in execution.CacheType}
    if "RAM_PRESSURE" in names:  # newer ComfyUI: default (main.py's headroom) and an explicit --cache-ram 4
        return [
            ("default (RAM pressure)", "RAM_PRESSURE", {"ram": 2.4, "ram_inactive": 24.0}),
            ("--cache-ram 4", "RAM_PRESSURE", {"ram": 4.0, "ram_inactive": 24.0}),
        ]
    return [("default (classic)", "CLASSIC", {}), ("--cache-lru 10", "LRU", {"lru": 10})]


def test_requeue_with_a_new_seed_runs_no_mllm_forward_in_every_cache_mode(comfy):
    modes = _cache_modes(comfy.execution)
    assert len(modes) == 2
    for label, cache, args in modes:
        runner = ComfyRunner(comfy.comfy_path, comfy.base_dir, comfy.modules, cache=cache, cache_args=args)
        graph = Graph()
        nodes = add_dla_pipeline(graph, prompt_text=f"a cat, cache {label}")
        sampled = add_staged_sampler(graph, nodes, steps=1)
        graph.add("PreviewAny", source=graph.out(sampled))
        first = runner.run(graph.prompt)
        assert first.success, (label, first.error_text)
        mllm = runner.output(nodes.mllm).loaded
        calls = mllm.forward_calls
        assert calls >= 1, label
        for seed in (8, 9):
            graph.prompt[sampled]["inputs"]["seed"] = seed
            again = runner.run(graph.prompt)
            assert again.success, (label, again.error_text)
            assert mllm.forward_calls == calls, f"{label}: the MLLM ran again for seed {seed}"
        cached = [data["nodes"] for event, data in again.messages if event == "execution_cached"]
        assert cached and nodes.features in cached[0] and nodes.positive in cached[0], label
