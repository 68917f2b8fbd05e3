"""Compute saved by staged sampling on Qwen-Image-Edit-shaped token counts (analytic, real sizes).

Qwen-Image's DiT (60 blocks, width 3072, MLP 4x) runs joint attention over
``text tokens + output image tokens + reference latent tokens``. In stage 1 of the staged
recipe the reference latents are left out, so those calls are cheaper; the text tokens
(Qwen2.5-VL's joint encoding of instruction + reference images) are the same in every stage.

Per block and call: linear layers ``12 * d^2`` multiply-adds per token (q, k, v, out, MLP
up/down; both streams alike) plus attention ``2 * N^2 * d`` (scores and weighted sum) for a
sequence of N tokens. Modulation (per sample, not per token) is left out.

Run: ``python bench/bench_qwen_staging.py`` (prints ratios; no GPU, no model files).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dla_core.flux.sampling import flux_sigmas  # noqa: E402
from dla_core.qwen_template import dit_image_tokens, qwen_vl_image_tokens, scaled_size  # noqa: E402
from dla_core.schedule import stage_step_counts  # noqa: E402

QWEN_IMAGE_BLOCKS = 60
QWEN_IMAGE_WIDTH = 3072
TEMPLATE_TOKENS = 12  # "<|im_end|>\n<|im_start|>assistant\n" and the vision delimiters kept after the dropped prefix
INSTRUCTION_TOKENS = 40


def call_flops(
    text_tokens: int, image_tokens: int, blocks: int = QWEN_IMAGE_BLOCKS, width: int = QWEN_IMAGE_WIDTH
) -> float:
    """FLOPs (2 x multiply-adds) of one DiT call on ``text_tokens + image_tokens`` tokens."""
    tokens = text_tokens + image_tokens
    return 2.0 * blocks * (12 * width * width * tokens + 2 * tokens * tokens * width)


def auraflow_sigmas(steps: int, shift: float) -> list[float]:
    """ComfyUI's ModelSamplingAuraFlow + simple scheduler (Qwen-Image workflows): sigma = s*t / (1 + (s-1)*t)."""
    times = [1.0 - i / steps for i in range(steps)]
    return [shift * t / (1 + (shift - 1) * t) for t in times] + [0.0]


def report(
    refs: int, out_side: int, ref_side: int, mllm_side: int, sigmas: list[float], tau1: float, tau2: float
) -> dict:
    """Token counts and the staged/unstaged FLOP ratio for one setting."""
    text = INSTRUCTION_TOKENS + TEMPLATE_TOKENS + refs * (qwen_vl_image_tokens(*scaled_size(1024, 1024, mllm_side)) + 6)
    out_tokens = dit_image_tokens(out_side, out_side)
    ref_tokens = refs * dit_image_tokens(*scaled_size(1024, 1024, ref_side, 8))
    s1, s2, s3 = stage_step_counts(sigmas, tau1, tau2)
    with_refs = call_flops(text, out_tokens + ref_tokens)
    without_refs = call_flops(text, out_tokens)
    unstaged = (s1 + s2 + s3) * with_refs
    staged = s1 * without_refs + (s2 + s3) * with_refs
    return dict(
        refs=refs,
        text=text,
        out=out_tokens,
        ref=ref_tokens,
        steps=(s1, s2, s3),
        call_ratio=without_refs / with_refs,
        ratio=staged / unstaged,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--shift", type=float, default=3.0, help="ModelSamplingAuraFlow shift of the Qwen-Image workflow"
    )
    parser.add_argument("--tau1", type=float, default=0.95)
    parser.add_argument("--tau2", type=float, default=0.85)
    args = parser.parse_args(argv)
    schedules = {
        f"AuraFlow shift {args.shift}, {args.steps} steps": auraflow_sigmas(args.steps, args.shift),
        f"FLUX shift at 1024^2, {args.steps} steps": flux_sigmas(1024, 1024, args.steps),
    }
    print(f"Qwen-Image-Edit staging cost (tau1={args.tau1}, tau2={args.tau2}); FLOPs of the DiT only, 60 blocks x 3072")
    print(
        "schedule | refs | text tok | out tok | ref tok | steps s1/s2/s3 | stage-1 call / full call | staged / unstaged"
    )
    for name, sigmas in schedules.items():
        for refs in (1, 2, 3):
            r = report(refs, 1024, 1024, 384, sigmas, args.tau1, args.tau2)
            print(
                f"{name} | {r['refs']} | {r['text']} | {r['out']} | {r['ref']} | {'/'.join(map(str, r['steps']))} | "
                f"{r['call_ratio']:.3f} | {r['ratio']:.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
