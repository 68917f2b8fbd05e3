"""Command line of the trainer.

python -m dla_core.train --config cfg.yaml                 # train (both stages), resumes with --resume latest
accelerate launch -m dla_core.train --config cfg.yaml      # same, on every GPU/node accelerate is set up for
python -m dla_core.train validate --config cfg.yaml        # check config + manifest only (seconds)
python -m dla_core.train prepare --config cfg.yaml [--rank R --world-size W]
python -m dla_core.train export --config cfg.yaml [--checkpoint DIR] --out DIR
"""

from __future__ import annotations

import argparse
import sys

from ..errors import DLAInputError

COMMANDS = ("train", "prepare", "export", "validate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dla_core.train", description="Train the DLA and a FLUX LoRA in two stages."
    )
    sub = parser.add_subparsers(dest="command")
    for name, help_text in (
        ("train", "run / resume the two training stages (default command)"),
        ("prepare", "cache MLLM features and VAE latents as safetensors shards"),
        ("export", "write dla.safetensors + lora.safetensors from a checkpoint"),
        ("validate", "check the config and the manifest, load nothing"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help="training YAML (see configs/train_tiny.yaml)")
        if name == "train":
            p.add_argument("--resume", default=None, help="'latest' or a checkpoints/step-* folder")
            p.add_argument(
                "--stop-at-step", type=int, default=None, help="stop (with a checkpoint) after this many steps"
            )
        if name == "prepare":
            p.add_argument("--rank", type=int, default=None, help="this process's index (default: from accelerate)")
            p.add_argument(
                "--world-size", type=int, default=None, help="number of prepare processes (default: from accelerate)"
            )
            p.add_argument("--max-shards", type=int, default=None, help="write at most this many shards, then stop")
        if name == "export":
            p.add_argument("--checkpoint", default=None, help="checkpoints/step-* folder (default: newest)")
            p.add_argument("--out", required=True, help="output folder for dla.safetensors and lora.safetensors")
            p.add_argument("--lora-dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS + ("-h", "--help"):
        argv = ["train"] + argv  # `python -m dla_core.train --config cfg.yaml` trains
    args = build_parser().parse_args(argv)
    try:
        import torch

        from .config import load_config
        from .data import read_manifest

        config = load_config(args.config)
        if args.command == "validate":
            from .buckets import bucket_histogram, manifest_buckets

            records = read_manifest(config.data.manifest) if config.data.manifest else []
            print(
                f"config OK: {config.total_steps} steps ({config.train.stage1_steps} + {config.train.stage2_steps}), "
                f"LoRA rank {config.lora.rank}; manifest OK: {len(records)} examples"
            )
            if records:
                histogram = bucket_histogram(manifest_buckets(records, config.data))
                print("target buckets: " + ", ".join(f"{w}x{h}: {n}" for (w, h), n in histogram.items()))
        elif args.command == "prepare":
            from .prepare import prepare_cache

            report = prepare_cache(config, rank=args.rank, world_size=args.world_size, max_shards=args.max_shards)
            print(
                f"prepare rank {report.rank}/{report.world_size}: wrote {len(report.shards_written)} shard(s), "
                f"skipped {len(report.shards_skipped)} finished, {report.shards_total} in total, {report.seconds:.1f} s"
            )
        elif args.command == "train":
            from .trainer import train

            result = train(config, resume=args.resume, stop_at_step=args.stop_at_step)
            if result.losses:
                print(
                    f"trained steps {result.start_step}..{result.end_step}: loss {result.losses[0]:.4f} -> "
                    f"{result.losses[-1]:.4f} in {result.seconds:.1f} s"
                    + (f"; exported to {result.export_dir}" if result.export_dir else "")
                )
        elif args.command == "export":
            from .export import export_checkpoint

            out = export_checkpoint(config, args.checkpoint, args.out, getattr(torch, args.lora_dtype))
            print(f"exported {out}/dla.safetensors and {out}/lora.safetensors")
    except DLAInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
