"""Staged sampling cost, measured side by side on the tiny FLUX inside a real ComfyUI (CPU).

Four samplings of the same latent, seed and step count, interleaved and repeated:

  native_mllm      ComfyUI's KSampler, MLLM conditioning at every step (no references)
  staged_stage1    Staged KSampler with tau 0/0 (every step in stage 1: the same model work)
  native_full      ComfyUI's KSampler, MLLM tokens + reference latents at every step
  staged_paper     Staged KSampler with tau 0.95/0.85 (the paper's schedule)

Ratios: staged_stage1 / native_mllm (the guider's own overhead; goal <= 1.01) and
staged_paper / native_full (what staging saves). Then the token counts the schedule implies
for FLUX.1-dev at 1024x1024 (4096 image tokens, +4096 per 1024x1024 reference, N MLLM
tokens), with the stage split from ``dla_core.schedule``.

Usage: python bench/bench_staged.py [--steps 4] [--repeats 2] [--mllm-tokens 300]
(ComfyUI from $COMFYUI_PATH or /opt/ComfyUI; tiny models are built in a temp dir, or reused
from $DLA_TINY_MODELS_CACHE.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[len(sys.path) :] = [str(REPO_ROOT), str(REPO_ROOT / "tests" / "lib")]  # dla_core; the test harness

import dla_harness as harness  # noqa: E402


def _prepare(steps: int):
    import os

    comfy_path, reason = harness.find_comfyui()
    if comfy_path is None:
        raise SystemExit(reason)
    cache = os.environ.get("DLA_TINY_MODELS_CACHE") or tempfile.mkdtemp(prefix="dla-bench-models-")
    models = harness.cached_tiny_models_tree(Path(cache), harness.tiny_flux_width(comfy_path))
    base = harness.make_comfy_base_directory(Path(tempfile.mkdtemp(prefix="dla-bench-comfy-")), models)
    runner = harness.ComfyRunner(comfy_path, base, harness.start_comfy_in_process(comfy_path, base))
    graph = harness.Graph()
    nodes = harness.add_dla_pipeline(graph)
    full = graph.add(
        "DLAStageConditioning",
        positive=graph.out(nodes.positive),
        stage="2: MLLM + identity",
        identity=graph.out(nodes.identity),
    )
    for node in (full, nodes.model, nodes.latent):
        graph.add("PreviewAny", source=graph.out(node))
    result = runner.run(graph.prompt)
    if not result.success:
        raise SystemExit(result.error_text)
    return runner, {
        name: runner.output(getattr(nodes, name)) for name in ("model", "positive", "identity", "latent")
    } | {"full": runner.output(full)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--mllm-tokens",
        type=int,
        default=300,
        help="MLLM tokens assumed at full scale (InternVL3-8B, one 448 px reference + prompt)",
    )
    args = parser.parse_args(argv)

    runner, inputs = _prepare(args.steps)
    import comfy.model_management
    import torch

    import nodes as comfy_nodes

    staged = runner.nodes.NODE_CLASS_MAPPINGS["DLAStagedKSampler"]
    model, latent = inputs["model"], inputs["latent"]
    comfy.model_management.load_models_gpu([model])

    def native(positive):
        return comfy_nodes.common_ksampler(model, 7, args.steps, 1.0, "euler", "simple", positive, positive, latent)[0]

    def staged_run(tau1, tau2):
        return staged.execute(
            model=model,
            positive=inputs["positive"],
            latent_image=latent,
            seed=7,
            steps=args.steps,
            cfg=1.0,
            sampler_name="euler",
            scheduler="simple",
            denoise=1.0,
            tau1=tau1,
            tau2=tau2,
            identity=inputs["identity"],
        ).result[0]

    variants = {
        "native_mllm": lambda: native(inputs["positive"]),
        "staged_stage1": lambda: staged_run(0.0, 0.0),
        "native_full": lambda: native(inputs["full"]),
        "staged_paper": lambda: staged_run(0.95, 0.85),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}  # CPU seconds of this process
    walls: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for name, run in variants.items():  # warm-up (first model load, lazy inits)
            run()
        for _ in range(args.repeats):
            for name, run in variants.items():
                start, start_wall = time.process_time(), time.perf_counter()
                out = run()
                times[name].append(time.process_time() - start)
                walls[name].append(time.perf_counter() - start_wall)
                assert torch.isfinite(out["samples"]).all()
        same = torch.equal(native(inputs["positive"])["samples"], staged_run(0.0, 0.0)["samples"])

    best = {name: min(values) for name, values in times.items()}
    print(
        f"\nTiny FLUX (1 double + 1 single block, 3072 wide), 64x64 px, {args.steps} euler steps, {args.repeats} "
        "interleaved repeats."
    )
    print("Process CPU time (robust to other jobs on a shared machine; ratios use the best), wall time for reference:")
    for name, values in times.items():
        print(
            f"  {name:14s} cpu best {best[name]:7.2f} s  median {statistics.median(values):7.2f} s   wall median "
            f"{statistics.median(walls[name]):7.2f} s"
        )
    print(f"  staged tau 0/0 == native, bit for bit: {same}")
    print(
        f"  overhead   staged_stage1 / native_mllm = {best['staged_stage1'] / best['native_mllm']:.3f}  (goal <= 1.01)"
    )
    print(f"  staging    staged_paper  / native_full = {best['staged_paper'] / best['native_full']:.3f}")

    from dla_core.flux.sampling import flux_sigmas
    from dla_core.schedule import stage_step_counts

    mllm_tokens = inputs["positive"][0][0].shape[1]
    null_tokens = inputs["positive"][0][1]["dla_mllm_off"][0][0].shape[1]
    ref_tokens = sum(latent_ref.shape[-1] * latent_ref.shape[-2] // 4 for latent_ref in inputs["identity"].latents)
    image_tokens = latent["samples"].shape[-1] * latent["samples"].shape[-2] // 4
    print(
        f"  tiny token counts: image {image_tokens}, reference {ref_tokens}, MLLM {mllm_tokens}, MLLM-off {null_tokens}"
    )

    for steps in (28,):
        counts = stage_step_counts(flux_sigmas(1024, 1024, steps), 0.95, 0.85)
        n, image, ref, null = args.mllm_tokens, 4096, 4096, null_tokens
        per_stage = (image + n, image + ref + n, image + ref + null)
        always = image + ref + n
        linear = sum(c * t for c, t in zip(counts, per_stage)) / (steps * always)
        quadratic = sum(c * t * t for c, t in zip(counts, per_stage)) / (steps * always * always)
        print(f"\nFLUX.1-dev 1024x1024, {steps} steps, tau 0.95/0.85: stage steps {counts[0]}/{counts[1]}/{counts[2]}")
        print(
            f"  tokens per step: stage 1 {per_stage[0]}, stage 2 {per_stage[1]}, stage 3 {per_stage[2]}; always-on "
            f"{always} (N={n} MLLM tokens)"
        )
        print(
            f"  staged / always-on: token-steps (linear layers) {linear:.3f}, token^2-steps (attention) {quadratic:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
