"""LAP / DLA forward cost per token at InternVL3-8B widths (29 layers x 3584), CPU by default.

Instantiates the paper-scale DLA randomly (the ``init_dla`` defaults for InternVL3-8B ->
FLUX: LAP width 1024, 16 heads, MLP 4096, 2 blocks, flatten pool) and times its forward on
random all-layer features against the "last layer" baseline, one 3584 -> 4096 linear
projection of the last layer's states, side by side in one run. Also counts the parameters
of the other configurations (on the meta device, nothing allocated).

    python bench/bench_dla.py                       # 512 and 1024 tokens, fp32 and bf16, CPU
    python bench/bench_dla.py --tokens 256 --dtypes fp32 --device cuda

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dla_core.checkpoint import init_dla  # noqa: E402
from dla_core.features import MLLMFeatures  # noqa: E402
from dla_core.spec import MLLMSpec  # noqa: E402

INTERNVL3_8B = MLLMSpec(family="internvl", num_layers=29, width=3584, name="InternVL3-8B (random weights)")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TEXT_FRACTION = 0.25  # share of tokens routed to the text LAP; cost is linear in tokens either way


def make_features(tokens: int, dtype: torch.dtype, device: str, seed: int = 0) -> MLLMFeatures:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(
        1, INTERNVL3_8B.num_layers, tokens, INTERNVL3_8B.width, generator=generator
    )  # [batch, layers, tokens, width]
    n_text = int(tokens * TEXT_FRACTION)
    text = torch.zeros(1, tokens, dtype=torch.bool)
    text[:, :n_text] = True
    return MLLMFeatures(
        hidden_states=hidden.to(device=device, dtype=dtype),
        image_mask=(~text).to(device),
        text_mask=text.to(device),
        attention_mask=torch.ones(1, tokens, dtype=torch.bool, device=device),
        family=INTERNVL3_8B.family,
        num_layers=INTERNVL3_8B.num_layers,
        width=INTERNVL3_8B.width,
        layer_indices=tuple(range(INTERNVL3_8B.num_layers)),
    )


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn, device: str, repeats: int) -> float:
    """Median seconds of ``repeats`` calls (warm up separately, see ``main``)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dla_flops_per_token(config) -> float:
    """Multiply-adds x 2 per token of one LAP + the shared projection (pooled/null are per sample)."""
    layers, width, lap, mlp = config.lap_layers, config.mllm_width, config.lap_width, config.lap_mlp_hidden
    flops = 0.0 if width == lap else 2 * layers * width * lap  # input projection
    per_block = (
        2 * layers * (3 * lap * lap + lap * lap + 2 * lap * mlp) + 4 * layers * layers * lap
    )  # linears + attention
    flops += config.lap_blocks * per_block
    flops += 2 * layers * lap * lap if config.lap_pool == "flatten" else 2 * lap * lap  # pool FC
    return flops + 2 * lap * config.context_width  # shared output projection


def count_params(**overrides) -> int:
    with torch.device("meta"):
        return init_dla(INTERNVL3_8B, target="flux", **overrides).num_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed DLA calls per point (median); the baseline gets 5 or more"
    )
    args = parser.parse_args()

    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"MLLM: {INTERNVL3_8B.describe()}; target FLUX (4096 tokens, 768 pooled)")
    print("parameters (whole DLA: two LAPs + shared projection + pooled + null):")
    configs = [
        ("random init, flatten pool (default)", {}),
        ("random init, weighted pool", {"lap_pool": "weighted"}),
        ("identity init, flatten pool (lap width 3584)", {"init": "identity"}),
        ("identity init, weighted pool (lap width 3584)", {"init": "identity", "lap_pool": "weighted"}),
    ]
    for label, overrides in configs:
        print(f"  {label:48s} {count_params(**overrides) / 1e6:8.1f} M")
    baseline_params = INTERNVL3_8B.width * 4096 + 4096
    print(f"  {'last-layer baseline (3584 -> 4096 linear)':48s} {baseline_params / 1e6:8.1f} M")

    dla = init_dla(INTERNVL3_8B, target="flux", seed=0).eval().to(args.device)
    baseline = torch.nn.Linear(INTERNVL3_8B.width, 4096).eval().to(args.device)
    dla_flops, base_flops = dla_flops_per_token(dla.config), 2 * INTERNVL3_8B.width * 4096
    print(
        f"\nFLOPs per token: DLA {dla_flops / 1e9:.2f} G, last-layer baseline {base_flops / 1e9:.3f} G, ratio "
        f"{dla_flops / base_flops:.0f}x"
    )
    print(
        f"\n{'dtype':5s} {'tokens':>6s} {'DLA ms':>10s} {'DLA ms/token':>13s} {'last-layer ms':>14s} {'ms/token':>9s} "
        f"{'ratio':>7s}"
    )
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        dla.to(dtype=dtype)
        baseline.to(dtype=dtype)
        warm = make_features(16, dtype, args.device)
        with torch.inference_mode():  # first-call costs (allocator, kernels) out of the timings
            dla(warm)
            baseline(warm.hidden_states[0, -1])
        for tokens in args.tokens:
            features = make_features(tokens, dtype, args.device)
            last_layer = features.hidden_states[0, -1]  # [tokens, width]
            with torch.inference_mode():
                dla_s = time_call(lambda f=features: dla(f), args.device, args.repeats)
                base_s = time_call(lambda x=last_layer: baseline(x), args.device, max(args.repeats, 5))
            print(
                f"{dtype_name:5s} {tokens:6d} {dla_s * 1e3:10.1f} {dla_s * 1e3 / tokens:13.3f} "
                f"{base_s * 1e3:14.2f} {base_s * 1e3 / tokens:9.4f} {dla_s / base_s:7.1f}x"
            )
            del features, last_layer


if __name__ == "__main__":
    main()
