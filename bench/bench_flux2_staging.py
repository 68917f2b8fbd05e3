"""FLUX.2 staged references vs native multi-reference: time per step measured side by side, and the real-scale ratio.

FLUX.2 [dev] and [klein] feed every reference latent at every step (joint attention over text +
image + reference tokens). The staged recipe sends no reference tokens in stage 1 (t >= tau1), so
those calls are cheaper. Two parts, in one run:

1. **Measured** on a tiny FLUX.2 (ComfyUI's own FLUX.2 model class, 256 wide, 1 double + 1 single
   block) inside a real ComfyUI (CPU): ComfyUI's ``CFGGuider`` with text + references at every step
   vs the pack's ``Staged Guider (Advanced)`` (stage 1 text only, stages 2-3 text + references),
   same noise, the same FLUX.2 sigmas (ComfyUI's ``Flux2Scheduler`` for the real output size, so the
   stage split is the real one), 1, 2 and 4 references each as many tokens as the output image,
   interleaved and repeated; the median time per step and the ratio staged / native.
2. **Analytic** at real scale: FLOPs of the DiT calls (linear layers ``13 d^2`` multiply-adds per
   token and block for FLUX.2's SiLU-gated MLP of ratio 3, attention ``2 N^2 d``) for FLUX.2 [dev]
   at 1024x1024 with 1 MP references and 28 steps, and [klein] 4B at 4 steps. The block counts and
   widths below are the published model configs as this bench assumes them (flags change them).

The paper's goal for this issue: staged <= 0.90x native at 2 references.

FluxKVCache: stage 1 has no references, so the cache fills at the first stage-2 call; with stage 3
reusing stage 2's conditioning (this recipe) the cached keys/values stay right and the staged
guider allows the cache; a stage 3 with different text, or a reference timing that changes the
active references mid-run, is refused with a message (see README).

Usage: python bench/bench_flux2_staging.py [--steps 28] [--repeats 2] [--tau1 0.95] [--json results.json]
(ComfyUI with FLUX.2 (>= 0.3.72) from $COMFYUI_PATH; tiny models are built in a temp dir, removed at exit.)
``--json`` also writes every figure unrounded (the measured seconds per step and ratios, the analytic
rows), so a reader never recomputes a ratio from the rounded table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[len(sys.path) :] = [str(REPO_ROOT), str(REPO_ROOT / "tests" / "lib"), str(REPO_ROOT / "tests" / "integration")]

import dla_harness as harness  # noqa: E402

# (double blocks, single blocks, width) as assumed for the real models
MODELS = {
    "FLUX.2 [dev]": (8, 48, 6144),
    "FLUX.2 [klein] 4B": (5, 20, 3072),
}
LATENT_PATCH = 16  # px per token: 8x VAE downsampling, 2x2 patches folded into 128 channels


def call_flops(tokens: int, double_blocks: int, single_blocks: int, width: int) -> float:
    """FLOPs (2 x multiply-adds) of one FLUX.2 DiT call over ``tokens`` tokens (text + image + references)."""
    blocks = double_blocks + single_blocks
    return 2.0 * blocks * (13 * width * width * tokens + 2 * tokens * tokens * width)


def stage1_calls(times: list[float], tau1: float) -> int:
    """Model calls (Euler: one per step) at t >= tau1: stage 1, no reference tokens."""
    return sum(1 for t in times if t >= tau1)


def flux2_times(steps: int, side: int) -> list[float]:
    """t of each step of ComfyUI's Flux2Scheduler for a ``side`` x ``side`` output (the call times)."""
    from comfy_extras.nodes_flux import get_schedule

    sigmas = get_schedule(steps, round(side * side / LATENT_PATCH**2))
    return [float(s) for s in sigmas[:-1]]


def analytic(model: str, steps: int, side: int, refs: int, text_tokens: int, tau1: float) -> dict:
    double, single, width = MODELS[model]
    image = (side // LATENT_PATCH) ** 2
    times = flux2_times(steps, side)
    first = stage1_calls(times, tau1)
    with_refs = call_flops(text_tokens + image + refs * image, double, single, width)
    without = call_flops(text_tokens + image, double, single, width)
    native_tokens = steps * (text_tokens + image + refs * image)
    staged_tokens = first * (text_tokens + image) + (steps - first) * (text_tokens + image + refs * image)
    return dict(
        stage1=first,
        token_ratio=staged_tokens / native_tokens,
        flop_ratio=(first * without + (steps - first) * with_refs) / (steps * with_refs),
    )


def _measure(args):
    """Yields (references, (native s/step, staged s/step)) for 1, 2 and 4 references."""
    import comfy.samplers
    import comfy.sd
    import node_helpers
    import torch
    from comfy_extras.nodes_custom_sampler import CFGGuider, RandomNoise, SamplerCustomAdvanced
    from tiny_flux2 import build_tiny_flux2

    model = comfy.sd.load_diffusion_model(str(build_tiny_flux2(Path(args.work_dir) / "flux2.safetensors")))
    side = args.tiny_side // LATENT_PATCH
    generator = torch.Generator().manual_seed(0)
    text = [[torch.randn(1, args.tiny_text_tokens, 96, generator=generator) * 0.5, {"guidance": 4.0}]]
    latent = {"samples": torch.zeros(1, 128, side, side)}
    steps = args.measure_steps or args.steps
    sigmas = torch.tensor(flux2_times(steps, 1024) + [0.0])  # the real-scale schedule: the real stage split
    noise = RandomNoise.execute(0).result[0]
    sampler = comfy.samplers.sampler_object("euler")
    staged_node = harness.pack_module("nodes.staged_advanced").DLAStagedGuiderAdvanced
    for refs in (1, 2, 4):
        references = [torch.randn(1, 128, side, side, generator=generator) for _ in range(refs)]
        with_refs = node_helpers.conditioning_set_values(text, {"reference_latents": references}, append=True)
        guiders = {
            "native": CFGGuider.execute(model, with_refs, with_refs, 1.0).result[0],
            "staged": staged_node.execute(model, text, 1.0, args.tau1, 0.0, positive_stage2=with_refs).result[0],
        }
        timings = {name: [] for name in guiders}
        for _ in range(args.repeats + 1):  # the first round warms up and is dropped
            for name, guider in guiders.items():
                start = time.perf_counter()
                SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent)
                timings[name].append((time.perf_counter() - start) / steps)
        yield refs, tuple(statistics.median(timings[name][1:]) for name in ("native", "staged"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=28, help="FLUX.2 [dev] steps (the default workflow's 28)")
    parser.add_argument("--klein-steps", type=int, default=4)
    parser.add_argument("--measure-steps", type=int, default=0, help="steps of the measured runs (default: --steps)")
    parser.add_argument("--analytic-only", action="store_true", help="skip the measured part")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tau1", type=float, default=0.95)
    parser.add_argument("--text-tokens", type=int, default=512, help="text tokens at real scale")
    parser.add_argument("--tiny-side", type=int, default=256, help="output side (px) of the measured tiny runs")
    parser.add_argument("--tiny-text-tokens", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write every figure, unrounded, to this JSON file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dla-bench-flux2-") as work:
        args.work_dir = work
        return _run(args)


def _run(args) -> int:

    comfy_path, reason = harness.find_comfyui()
    if comfy_path is None:
        raise SystemExit(reason)
    work = Path(args.work_dir)
    (work / "models").mkdir()
    base = harness.make_comfy_base_directory(work / "comfy", work / "models")
    harness.start_comfy_in_process(comfy_path, base)
    from tiny_flux2 import comfy_has_flux2

    if not comfy_has_flux2():
        raise SystemExit(harness.pack_module("nodes.compat").flux2_missing_message())

    times = flux2_times(args.steps, 1024)
    print(
        f"FLUX.2 schedule (Flux2Scheduler, 1024x1024, {args.steps} steps): t = " + ", ".join(f"{t:.3f}" for t in times)
    )
    print(f"stage 1 (t >= tau1 = {args.tau1}): {stage1_calls(times, args.tau1)} of {args.steps} steps\n")

    print(f"1. measured: tiny FLUX.2 in ComfyUI, {args.tiny_side}x{args.tiny_side}, references as large as the output")
    print(f"{'refs':>4} {'native s/step':>14} {'staged s/step':>14} {'staged/native':>14}", flush=True)
    results = {"measured": [], "analytic": [], "tau1": args.tau1, "tiny_side": args.tiny_side}
    for refs, (native, staged) in () if args.analytic_only else _measure(args):
        print(f"{refs:>4} {native:>14.6f} {staged:>14.6f} {staged / native:>14.3f}", flush=True)
        results["measured"].append(dict(refs=refs, native_s=native, staged_s=staged, ratio=staged / native))

    print("\n2. analytic at real scale (1 MP references, 1024x1024 output)")
    print(f"{'model':<18} {'steps':>5} {'refs':>4} {'stage 1':>7} {'token-steps':>11} {'FLOPs':>7}")
    for model, steps in (("FLUX.2 [dev]", args.steps), ("FLUX.2 [klein] 4B", args.klein_steps)):
        for refs in (1, 2, 4):
            row = analytic(model, steps, 1024, refs, args.text_tokens, args.tau1)
            results["analytic"].append(dict(model=model, steps=steps, refs=refs, **row))
            print(
                f"{model:<18} {steps:>5} {refs:>4} {row['stage1']:>7} {row['token_ratio']:>11.3f} "
                f"{row['flop_ratio']:>7.3f}"
            )
    print("\nratios are staged / native (lower is cheaper); goal at 2 references: <= 0.90")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
