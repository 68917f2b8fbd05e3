"""bench/bench_reference_strength.py runs against this row's ComfyUI (tiny sizes), so the strength bench never rots.

Nothing here asserts on wall-clock time: the printed table must agree with the unrounded JSON the bench
writes, and the ratios must be the ratios of the measured times. ComfyUI 0.3.64 has no FLUX.2: there the
bench stops with the pack's one-line notice.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH = REPO_ROOT / "bench" / "bench_reference_strength.py"
ROW = re.compile(r"^\s*(\d)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")


@pytest.fixture(scope="module")
def bench_output(comfyui_path, tmp_path_factory):
    """(completed process, path of the JSON the bench writes) of one tiny run."""
    results = tmp_path_factory.mktemp("strength-bench") / "results.json"
    command = [sys.executable, str(BENCH), "--repeats", "1", "--steps", "2", "--tiny-side", "64"]
    command += ["--tiny-text-tokens", "8", "--json", str(results)]
    env = {**os.environ, "COMFYUI_PATH": str(comfyui_path)}
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env=env)
    return completed, results


def test_bench_prints_the_measured_times_and_their_ratios(bench_output, comfyui_path):
    completed, results_path = bench_output
    import ci_guard

    if "class Flux2" not in (Path(comfyui_path) / "comfy" / "latent_formats.py").read_text(encoding="utf-8"):
        assert completed.returncode != 0
        assert "has no FLUX.2" in completed.stderr
        assert f"({ci_guard.comfyui_version(comfyui_path)})" in completed.stderr
        return
    assert completed.returncode == 0, completed.stderr[-4000:]
    printed = {
        int(m.group(1)): [float(v) for v in m.groups()[1:]] for m in map(ROW.match, completed.stdout.splitlines()) if m
    }
    assert sorted(printed) == [1, 2, 4]
    results = json.loads(results_path.read_text(encoding="utf-8"))
    assert [row["refs"] for row in results["measured"]] == [1, 2, 4]
    for row in results["measured"]:
        seconds = [row["none_s"], row["constant_s"], row["ramp_s"]]
        assert all(math.isfinite(value) and value > 0 for value in seconds), row
        # the ratios of the measured times themselves, not of rounded ones
        assert row["constant_ratio"] == row["constant_s"] / row["none_s"]
        assert row["ramp_ratio"] == row["ramp_s"] / row["none_s"]
        figures = printed[row["refs"]]
        for value, shown in zip(seconds, figures[:3]):
            assert abs(shown - value) <= 0.5e-6 + 1e-12  # 6 digits printed
        for value, shown in zip((row["constant_ratio"], row["ramp_ratio"]), figures[3:]):
            assert abs(shown - value) <= 0.5e-3 + 1e-12  # 3 digits printed
        assert row["strengths"]["none"] == "" and "0.5" in row["strengths"]["constant"]
