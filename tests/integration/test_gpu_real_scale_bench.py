"""bench/gpu_real_scale.py at tiny sizes on the CPU, against this row's ComfyUI, so the GPU bench never rots.

The bench runs once per session in a subprocess (it starts its own ComfyUI in its process, with
its own arguments); the tests read the JSON it writes and the table it prints.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH = REPO_ROOT / "bench" / "gpu_real_scale.py"
FLUX_VARIANTS = ("native_no_reference", "staged_tau0", "native_reference_every_step", "staged_paper")
MEMORY_KEYS = ("peak_mib", "peak_delta_mib")


@pytest.fixture(scope="module")
def bench_run(comfyui_path, tmp_path_factory):
    """(results JSON, stdout) of one tiny CPU run of the bench against this row's ComfyUI."""
    out = tmp_path_factory.mktemp("gpu-bench") / "results.json"
    command = [sys.executable, str(BENCH), "--tiny", "--device", "cpu", "--comfyui", str(comfyui_path)]
    command += ["--out", str(out)]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, (
        f"bench failed ({completed.returncode}):\n{completed.stdout[-4000:]}\n{completed.stderr[-8000:]}"
    )
    return json.loads(out.read_text(encoding="utf-8")), completed.stdout


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_help_needs_no_comfyui_and_no_gpu():
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COMFYUI_PATH": "/nonexistent"},
    )
    assert completed.returncode == 0, completed.stderr
    assert "--tiny" in completed.stdout and "--comfyui" in completed.stdout


def test_real_sizes_on_a_cpu_are_refused_with_the_fix(comfyui_path):
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--device", "cpu", "--comfyui", str(comfyui_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode != 0
    assert "--tiny" in completed.stderr


def test_mllm_capture_and_plain_forward_are_both_timed_and_measured(bench_run):
    mllm = bench_run[0]["mllm"]
    scale = bench_run[0]["scale"]
    assert mllm["layers_captured"] == scale["text_layers"] + 1  # embeddings + every decoder layer
    assert mllm["prompt_tokens"] == scale["prompt_tokens"]
    for variant in ("plain_forward", "capture"):
        figures = mllm[variant]
        assert _positive(figures["seconds"]) and _positive(figures["backbone_seconds"])
        assert figures["backbone_seconds"] <= figures["seconds"]
        assert all(_positive(figures[key]) or figures[key] == 0 for key in MEMORY_KEYS)
    assert _positive(mllm["captured_mib"]) and _positive(mllm["parameters"])


def test_dla_is_measured_for_both_pools_in_both_dtypes(bench_run):
    rows = bench_run[0]["dla"]
    expected = {(pool, dtype) for pool in ("flatten", "weighted") for dtype in ("fp32", "bf16")}
    assert {(row["pool"], row["dtype"]) for row in rows} == expected
    for row in rows:
        assert _positive(row["seconds"]) and _positive(row["parameters"]) and _positive(row["weights_mib"])
        assert row["output_tokens"] == bench_run[0]["mllm"]["image_tokens"] + bench_run[0]["mllm"]["prompt_tokens"]
        assert _positive(row["peak_mib"])


def test_every_flux_variant_is_timed_with_its_memory(bench_run):
    flux = bench_run[0]["flux"]
    for variant in FLUX_VARIANTS:
        assert _positive(flux[variant]["seconds"]), variant
        assert _positive(flux[variant]["peak_mib"]), variant
    steps = bench_run[0]["scale"]["steps"]
    assert sum(flux["stage_steps_paper"]) == steps and all(count > 0 for count in flux["stage_steps_paper"])
    assert flux["reference_tokens"] > 0 and flux["mllm_tokens"] > 0


def test_staged_tau0_gives_the_native_latents_bit_for_bit(bench_run):
    assert bench_run[0]["flux"]["staged_tau0_equals_native"] is True


def test_every_output_of_the_tiny_models_is_finite(bench_run):
    results = bench_run[0]
    flags = [results["mllm"]["outputs_finite"], results["pipeline"]["outputs_finite"]]
    flags += [row["outputs_finite"] for row in results["dla"]]
    flags += [results["flux"][variant]["outputs_finite"] for variant in FLUX_VARIANTS]
    assert all(flag is True for flag in flags), flags
    assert "error" not in results


def test_every_ratio_is_finite_and_positive(bench_run):
    ratios = bench_run[0]["ratios"]
    assert set(ratios) == {
        "capture_vs_forward_backbone",
        "capture_vs_forward_call",
        "staged_vs_reference_every_step",
        "staged_tau0_vs_native",
    }
    assert all(_positive(value) for value in ratios.values()), ratios
    assert set(bench_run[0]["goals_met"]) == set(bench_run[0]["goals"])


def test_pipeline_is_timed_warm_cold_and_on_a_simulated_24gb_card(bench_run):
    pipeline = bench_run[0]["pipeline"]
    for run in (pipeline["warm"], pipeline["cold"], pipeline["simulated_card"]):
        assert _positive(run["seconds"]) and _positive(run["peak_mib"])
    assert pipeline["simulated_card"]["card_gib"] == 24
    assert pipeline["image_shape"][1:] == [bench_run[0]["scale"]["image_side"]] * 2 + [3]


def test_cpu_memory_figures_are_marked_as_rss_approximations(bench_run):
    results, stdout = bench_run
    assert results["memory_kind"] == "cpu_rss"
    assert "CPU RSS MiB (approx.)" in stdout
    assert results["pipeline"]["simulated_card"]["max_allocated_within_card"] is None  # no GPU claim from a CPU run


def test_json_names_the_device_and_versions(bench_run, comfyui_path):
    versions = bench_run[0]["versions"]
    assert versions["device_name"].startswith("CPU")
    assert versions["torch"] and versions["transformers"]
    assert versions["comfyui_path"] == str(comfyui_path)
    assert versions["comfyui"]


def test_one_table_with_every_row_is_printed(bench_run):
    stdout = bench_run[1]
    header = [line for line in stdout.splitlines() if line.startswith("measurement")]
    assert len(header) == 1
    for label in (
        "MLLM encode_joint",
        "DLA weighted bf16",
        "FLUX staged tau 0/0",
        "FLUX native, reference every step",
        "FLUX staged tau .95/.85",
        "pipeline end to end, cold",
        "simulated 24 GB card",
    ):
        assert label in stdout, label
