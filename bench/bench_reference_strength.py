"""The cost of reference_strength: staged guider time per step with and without strengths, side by side in one run.

A strength is an additive attention bias (``log(s)`` on each reference's keys) that the pack's attn1 patch
returns to every joint-attention layer of the DiT, so its cost is building that ``[1, 1, 1, keys]`` bias
per layer and attending with a mask instead of without one. Measured on a tiny FLUX.2 (ComfyUI's own
FLUX.2 model class, 256 wide, 1 double + 1 single block) inside a real ComfyUI: the pack's
``Staged Guider (Advanced)`` with every reference in every step (tau 0/0, so the stages do not mix into
the figure) and ``reference_strength`` empty (no patch: the native attention) vs ``1, 0.5, ...`` (one
reference at full strength, the others at 0.5) vs a ramp ``1>0.2`` on every reference, with 1, 2 and 4
references each as many tokens as the output image; the same noise and sigmas, interleaved and repeated;
the median time per step and the ratios to the run without strengths.

Attention with a mask may use another kernel than attention without one (on GPUs, PyTorch's flash kernel
takes no mask), so the ratio on a GPU can differ from the CPU figure; run the bench on the machine you use.

Usage: python bench/bench_reference_strength.py [--steps 8] [--repeats 2] [--tiny-side 256] [--json results.json]
(ComfyUI with FLUX.2 and FLUX attention patches (0.33) from $COMFYUI_PATH; tiny models in a temp dir.)
``--json`` also writes every figure unrounded.
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

LATENT_PATCH = 16  # px per FLUX.2 token: 8x VAE downsampling, 2x2 patches folded into 128 channels
VARIANTS = ("none", "constant", "ramp")


def strength_texts(refs: int) -> dict[str, str]:
    """The reference_strength of each variant for ``refs`` references."""
    return {
        "none": "",
        "constant": ", ".join(["1"] + ["0.5"] * (refs - 1)) if refs > 1 else "0.5",
        "ramp": ", ".join(["1>0.2"] * refs),
    }


def _measure(args):
    """Yields (references, {variant: s/step}) for 1, 2 and 4 references."""
    import comfy.samplers
    import comfy.sd
    import node_helpers
    import torch
    from comfy_extras.nodes_custom_sampler import RandomNoise, SamplerCustomAdvanced
    from tiny_flux2 import build_tiny_flux2

    model = comfy.sd.load_diffusion_model(str(build_tiny_flux2(Path(args.work_dir) / "flux2.safetensors")))
    side = args.tiny_side // LATENT_PATCH
    generator = torch.Generator().manual_seed(0)
    text = [[torch.randn(1, args.tiny_text_tokens, 96, generator=generator) * 0.5, {"guidance": 4.0}]]
    latent = {"samples": torch.zeros(1, 128, side, side)}
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", args.steps)
    noise = RandomNoise.execute(0).result[0]
    sampler = comfy.samplers.sampler_object("euler")
    staged_node = harness.pack_module("nodes.staged_advanced").DLAStagedGuiderAdvanced
    for refs in (1, 2, 4):
        references = [torch.randn(1, 128, side, side, generator=generator) for _ in range(refs)]
        with_refs = node_helpers.conditioning_set_values(text, {"reference_latents": references}, append=True)
        guiders = {
            name: staged_node.execute(model, with_refs, 1.0, 0.0, 0.0, reference_strength=strength).result[0]
            for name, strength in strength_texts(refs).items()
        }
        timings = {name: [] for name in guiders}
        for _ in range(args.repeats + 1):  # the first round warms up and is dropped
            for name, guider in guiders.items():
                start = time.perf_counter()
                SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent)
                timings[name].append((time.perf_counter() - start) / args.steps)
        yield refs, {name: statistics.median(timings[name][1:]) for name in VARIANTS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny-side", type=int, default=256, help="output side (px) of the tiny runs")
    parser.add_argument("--tiny-text-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", type=Path, help="also write every figure, unrounded, to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:  # a shared CPU: fewer threads give steadier timings
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="dla-bench-strength-") as work:
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
    error = harness.pack_module("dla_core.errors").DLAInputError

    print(f"tiny FLUX.2 in ComfyUI, {args.tiny_side}x{args.tiny_side}, {args.steps} Euler steps, references as large")
    print("as the output, every reference in every step; s/step, and the ratio to the run without strengths")
    print(
        f"{'refs':>4} {'none s/step':>12} {'const s/step':>12} {'ramp s/step':>12} {'const/none':>10} {'ramp/none':>10}"
    )
    results = {"measured": [], "steps": args.steps, "tiny_side": args.tiny_side}
    try:
        for refs, seconds in _measure(args):
            none, constant, ramp = (seconds[name] for name in VARIANTS)
            row = dict(
                refs=refs,
                none_s=none,
                constant_s=constant,
                ramp_s=ramp,
                constant_ratio=constant / none,
                ramp_ratio=ramp / none,
                strengths=strength_texts(refs),
            )
            results["measured"].append(row)
            print(
                f"{refs:>4} {none:>12.6f} {constant:>12.6f} {ramp:>12.6f} {row['constant_ratio']:>10.3f} "
                f"{row['ramp_ratio']:>10.3f}",
                flush=True,
            )
    except error as problem:  # a ComfyUI whose FLUX runs no attention patches: the node's own message
        raise SystemExit(str(problem))
    print("\nratios are with strengths / without (1.000 = no cost)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
