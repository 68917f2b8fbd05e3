"""Training levers side by side: seconds per step and peak memory measured on tiny models, and the analytic
per-GPU memory at real sizes.

1. **Measured**, in one run, on the tiny training world (``dla_core.train.tiny_setup``: tiny InternVL, tiny
   FLUX.1 transformer and VAE; LoRA rank 32, 64 px targets, batch 2): each variant trains in its own child
   process (so peak memory is its own) for ``--steps`` steps from the same prepared cache, ``--repeats`` times
   interleaved:
   cached vs online features, adamw vs adamw8bit (optimizer-state bytes by the trainer's own count), without
   and with gradient checkpointing. Seconds per step: the median over the steps after the first. Peak memory:
   ``torch.cuda.max_memory_allocated`` on a GPU, else the child's peak resident set (which includes Python and
   torch themselves, a few hundred MB: compare the variants, not the absolute figure). A lever whose library
   is missing or has no backend on this device (bitsandbytes on a CPU) is reported as such, with its
   state size from the byte rule.
2. **Analytic** (``dla_core.train.estimate``, the figures ``validate`` prints) at real sizes: FLUX.1-dev +
   InternVL3-8B (the paper), FLUX.2 [klein] 4B + Qwen3-VL-4B, [klein] 9B + Qwen3-VL-8B, [dev] +
   Mistral-Small-3.1-24B, the paper's recipe (rank 512, 1024 px, bf16, gradient checkpointing), batch 1 and 4
   per GPU: DDP with AdamW, with adamw8bit, with adamw8bit + int8 base, FSDP2 over 8 GPUs; the feature cache of
   200k samples in bfloat16 and float8.

Usage: python bench/bench_train.py [--steps 6] [--repeats 2] [--json results.json] [--analytic-only]
``--json`` writes every figure unrounded.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[len(sys.path) :] = [str(REPO_ROOT), str(REPO_ROOT / "tests" / "lib")]

GiB = 1024**3
VARIANTS = {  # name -> (data overrides, train overrides)
    "cached, adamw": ({}, {}),
    "online, adamw": ({"features": "online", "cache_dir": None}, {}),
    "cached, adamw8bit": ({}, {"optimizer": "adamw8bit"}),
    "cached, adamw, gradient checkpointing": ({}, {"gradient_checkpointing": True}),
}
REAL_BATCHES = (1, 4)
REAL_SAMPLES = 200_000


def tiny_config(world: Path, name: str, steps: int):
    from dla_train_helpers import tiny_run_config

    from dla_core.train.config import config_from_dict

    raw = tiny_run_config(output_dir=f"runs/{len(name)}-{abs(hash(name)) % 10**8}", stage1_steps=steps, stage2_steps=1)
    raw["data"].update(resolution=64, reference_size=64)
    raw["lora"]["rank"] = 32
    data, train = VARIANTS[name]
    raw["data"].update(data)
    raw["train"].update(train)
    return config_from_dict(raw, base_dir=world)


def child(world: Path, name: str, steps: int) -> dict:
    """Train one variant; its figures as a dict (or the reason it cannot run here)."""
    import torch

    from dla_core.errors import DLAInputError
    from dla_core.train.trainer import train

    torch.set_num_threads(1)
    config = tiny_config(world, name, steps)
    try:
        result = train(config, stop_at_step=steps, export=False)
    except DLAInputError as exc:
        return {"variant": name, "skipped": str(exc).split(" (")[0]}
    rows = (Path(config.train.output_dir) / "loss.csv").read_text().splitlines()[1:]
    seconds = [float(r.split(",")[4]) for r in rows]
    per_step = [b - a for a, b in zip(seconds, seconds[1:])]
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    return {
        "variant": name,
        "seconds_per_step": statistics.median(per_step) if per_step else float("nan"),
        "peak_bytes": peak,
        "peak_kind": "cuda_allocated" if torch.cuda.is_available() else "process_rss",
        "trainable_params": result.trainable_params,
        "optimizer_state_bytes": result.optimizer_state_bytes,
        "final_loss": result.losses[-1],
    }


def measured(steps: int, repeats: int) -> list[dict]:
    from dla_core.train.prepare import prepare_cache
    from dla_core.train.tiny_setup import build_tiny_training_world

    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as folder:
        world = build_tiny_training_world(Path(folder) / "world", num_samples=6, seed=0)
        prepare_cache(tiny_config(world, "cached, adamw", steps), rank=0, world_size=1, progress=False)
        for _ in range(repeats):  # interleaved, so a busy moment of the machine hits every variant
            for name in VARIANTS:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", name, "--world", str(world), "--steps", str(steps)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                runs[name].append(json.loads(out.strip().splitlines()[-1]))
    rows = []
    for name, results in runs.items():
        row = dict(results[0])
        if "skipped" not in row:
            row["seconds_per_step"] = statistics.median(r["seconds_per_step"] for r in results)
            row["peak_bytes"] = max(r["peak_bytes"] for r in results)
            row["repeats"] = len(results)
        rows.append(row)
    missing = [r for r in rows if "skipped" in r]
    if missing:  # the trainer's own byte rule for the state the lever would hold
        from dla_core.train.estimate import optimizer_state_bytes

        base = next(r for r in rows if r["variant"] == "cached, adamw")
        for row in missing:
            if "adamw8bit" in row["variant"]:
                ratio = optimizer_state_bytes([base["trainable_params"]], "adamw8bit") / optimizer_state_bytes(
                    [base["trainable_params"]], "adamw"
                )
                row["optimizer_state_bytes_by_rule"] = int(base["optimizer_state_bytes"] * ratio)
    return rows


def analytic() -> list[dict]:
    import yaml

    from dla_core.train.config import config_from_dict
    from dla_core.train.estimate import DIT_PRESETS, MLLM_PRESETS, PRESET_PAIRS, estimate, preset_dla_config

    paper = REPO_ROOT / "configs" / "train_paper.yaml"
    rows = []
    for dit_name, mllm_name in PRESET_PAIRS.items():
        dit, mllm = DIT_PRESETS[dit_name], MLLM_PRESETS[mllm_name]
        dla_config = preset_dla_config(mllm, dit_name)
        for batch in REAL_BATCHES:
            figures = {"dit": dit.name, "mllm": mllm.name, "batch": batch}
            for label, model, data, train in (
                ("ddp_adamw", {}, {}, {}),
                ("ddp_adamw8bit", {}, {}, {"optimizer": "adamw8bit"}),
                ("ddp_adamw8bit_int8", {"quantize_base": "int8"}, {}, {"optimizer": "adamw8bit"}),
                ("online_ddp_adamw", {}, {"features": "online"}, {"num_workers": 0}),
                ("cache_float8", {}, {"cache_dtype": "float8_e4m3fn"}, {}),
            ):
                raw = yaml.safe_load(paper.read_text())
                raw["model"].update(model)
                raw["data"].update(data)
                raw["train"].update(train, batch_size=batch)
                est = estimate(config_from_dict(raw, base_dir=paper.parent), dit, mllm, dla_config, REAL_SAMPLES)
                figures[label] = est.per_gpu_bytes
                if label == "ddp_adamw":
                    figures["fsdp2_8gpu_adamw"] = est.sharded_bytes(8, "fsdp2")
                    figures["cache_bfloat16_bytes"] = est.cache_bytes
                    figures["trainable_params"] = est.trainable_params
                if label == "cache_float8":
                    figures["cache_float8_bytes"] = est.cache_bytes
            rows.append(figures)
    return rows


def print_tables(measured_rows: list[dict], analytic_rows: list[dict]) -> None:
    if measured_rows:
        base = next(r for r in measured_rows if r["variant"] == "cached, adamw")
        print("measured on tiny models (one child process per variant):")
        print(f"{'variant':42} {'s/step':>8} {'x base':>7} {'peak MB':>9} {'optimizer state':>16}")
        for row in measured_rows:
            if "skipped" in row:
                state = row.get("optimizer_state_bytes_by_rule")
                print(f"{row['variant']:42} {'n/a':>8} {'':>7} {'':>9} {state or 0:16,}  ({row['skipped']}; by rule)")
                continue
            ratio = row["seconds_per_step"] / base["seconds_per_step"]
            print(
                f"{row['variant']:42} {row['seconds_per_step']:8.3f} {ratio:7.2f} {row['peak_bytes'] / 1e6:9.0f} "
                f"{row['optimizer_state_bytes']:16,}"
            )
        print(f"(peak memory: {base['peak_kind']})")
    print(
        f"\nanalytic per-GPU memory (GiB), paper recipe (rank 512, 1024 px, bf16, checkpointing), {REAL_SAMPLES:,} "
        "samples:"
    )
    header = (
        f"{'DiT + MLLM':48} {'batch':>5} {'DDP':>6} {'8bit':>6} {'8bit+int8':>9} {'online':>7} {'FSDP2x8':>8} "
        f"{'cache bf16':>11} {'cache fp8':>10}"
    )
    print(header)
    for row in analytic_rows:
        print(
            f"{row['dit'] + ' + ' + row['mllm']:48} {row['batch']:5d} {row['ddp_adamw'] / GiB:6.1f} "
            f"{row['ddp_adamw8bit'] / GiB:6.1f} {row['ddp_adamw8bit_int8'] / GiB:9.1f} "
            f"{row['online_ddp_adamw'] / GiB:7.1f} {row['fsdp2_8gpu_adamw'] / GiB:8.1f} "
            f"{row['cache_bfloat16_bytes'] / 1e12:8.1f} TB {row['cache_float8_bytes'] / 1e12:7.1f} TB"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each variant (interleaved); median s/step")
    parser.add_argument("--json", type=Path, help="also write every figure, unrounded, to this JSON file")
    parser.add_argument("--analytic-only", action="store_true", help="skip the measured part")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--world", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.world, args.child, args.steps)))
        return 0
    measured_rows = [] if args.analytic_only else measured(args.steps, args.repeats)
    analytic_rows = analytic()
    print_tables(measured_rows, analytic_rows)
    if args.json:
        args.json.write_text(json.dumps({"measured": measured_rows, "analytic": analytic_rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
