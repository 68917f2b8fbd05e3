"""Command line of the trainer.

python -m dla_core.train --config cfg.yaml                 # train (both stages), resumes with --resume latest
accelerate launch -m dla_core.train --config cfg.yaml      # same, on every GPU/node accelerate is set up for
python -m dla_core.train validate --config cfg.yaml        # check config + manifest only (seconds)
python -m dla_core.train prepare --config cfg.yaml [--rank R --world-size W]
python -m dla_core.train export --config cfg.yaml [--checkpoint DIR] --out DIR
python -m dla_core.train import folder ROOT [--out manifest.jsonl]             # data set -> manifest (no config)
python -m dla_core.train import parquet|hf|webdataset SOURCE... --out DIR --prompt-column C \
    (--reference-column C --target-column C | --pair-column C [--pair-padding 8])
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import DLAInputError

COMMANDS = ("train", "prepare", "export", "validate", "import")


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
        if name == "validate":
            p.add_argument(
                "--samples", type=int, default=None, help="size the data set this many samples (no manifest)"
            )
            p.add_argument(
                "--dit",
                default=None,
                help="DiT preset when model.flux is not there: flux1-dev, flux2-klein-4b, flux2-klein-9b, flux2-dev",
            )
            p.add_argument(
                "--mllm",
                default=None,
                help="MLLM preset: internvl3-8b, qwen3-vl-4b, qwen3-vl-8b, "
                "mistral-small-3.1-24b (default: the DiT preset's pair)",
            )
            p.add_argument("--gpus", type=int, default=8, help="GPUs for the ZeRO-2 / FSDP2 per-GPU figures")
        if name == "export":
            p.add_argument("--checkpoint", default=None, help="checkpoints/step-* folder (default: newest)")
            p.add_argument("--out", required=True, help="output folder for dla.safetensors and lora.safetensors")
            p.add_argument("--lora-dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    _add_import_parser(sub)
    return parser


def _add_import_parser(sub) -> None:
    importer = sub.add_parser("import", help="write a manifest from a folder, parquet, HF data set or WebDataset")
    sources = importer.add_subparsers(dest="source", required=True)
    folder = sources.add_parser("folder", help="target/<name>.png + <name>.txt, reference/<name>.png or <name>/")
    folder.add_argument("root", help="the data set folder")
    folder.add_argument("--out", default=None, help="manifest file (default: ROOT/manifest.jsonl)")
    folder.add_argument("--reference-dir", default="reference")
    folder.add_argument("--target-dir", default="target")
    folder.add_argument("--caption-dir", default=None, help="folder of <name>.txt captions (default: the targets')")
    for name, help_text in (
        ("parquet", "parquet files (pyarrow)"),
        ("hf", "a Hugging Face data set saved with save_to_disk (datasets)"),
        ("webdataset", "WebDataset tar shards (columns are the member extensions: jpg, txt, ref.png ...)"),
    ):
        p = sources.add_parser(name, help=help_text)
        p.add_argument("paths", nargs="+", help="the files / shards (hf: the data set folder)")
        p.add_argument("--out", required=True, help="output folder: manifest.jsonl + images/")
        p.add_argument("--prompt-column", required=True, help="text column; a.b reaches into a struct or JSON")
        p.add_argument("--reference-column", default=None)
        p.add_argument("--target-column", default=None)
        p.add_argument("--pair-column", default=None, help="one image holding both views side by side")
        p.add_argument("--pair-padding", type=int, default=0, help="px cut from each border of each half")
        p.add_argument("--pair-order", default="left-right", help="left-right: the left half is the reference")
        if name == "hf":
            p.add_argument("--split", default=None, help="split of a DatasetDict (train, test, ...)")


def run_validate(config, args) -> str:
    """The ``validate`` command: config, manifest, buckets, then the cache size and per-GPU memory estimate."""
    from .buckets import bucket_histogram, manifest_buckets
    from .data import read_manifest
    from .estimate import estimate_for_config, format_estimate

    if args.samples is not None and args.samples < 1:
        raise DLAInputError("--samples must be >= 1.")
    records = []
    if config.data.manifest and (args.samples is None or Path(config.data.manifest).is_file()):
        records = read_manifest(config.data.manifest)
    lines = [
        f"config OK: {config.total_steps} steps ({config.train.stage1_steps} + {config.train.stage2_steps}), "
        f"LoRA rank {config.lora.rank}; "
        + (f"manifest OK: {len(records)} examples" if records else f"no manifest read, sized for {args.samples or 0}")
    ]
    if records:
        histogram = bucket_histogram(manifest_buckets(records, config.data))
        lines.append("target buckets: " + ", ".join(f"{w}x{h}: {n}" for (w, h), n in histogram.items()))
    est = estimate_for_config(config, records, args.samples, args.dit, args.mllm)
    lines.append(est if isinstance(est, str) else format_estimate(est, config, args.gpus))
    return "\n".join(lines)


def run_import(args) -> str:
    """The ``import`` command; returns its report."""
    from . import importers

    if args.source == "folder":
        report = importers.import_folder(args.root, args.out, args.reference_dir, args.target_dir, args.caption_dir)
        return report.summary()
    spec = importers.ColumnSpec(
        prompt=args.prompt_column,
        reference=args.reference_column,
        target=args.target_column,
        pair=args.pair_column,
        pair_padding=args.pair_padding,
        pair_order=args.pair_order,
    )
    spec.check()
    columns = None
    if args.source == "parquet":
        columns, rows = importers.parquet_columns(args.paths), importers.parquet_rows(args.paths)
    elif args.source == "hf":
        columns, rows = importers.hf_dataset_rows(args.paths[0], args.split)
    else:
        rows = importers.webdataset_rows(args.paths)
    source = f"'{args.paths[0]}'" + (f" (+{len(args.paths) - 1} more)" if len(args.paths) > 1 else "")
    return importers.import_rows(rows, args.out, spec, columns, source).summary()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS + ("-h", "--help"):
        argv = ["train"] + argv  # `python -m dla_core.train --config cfg.yaml` trains
    args = build_parser().parse_args(argv)
    if args.command == "import":
        try:
            print(run_import(args))
        except DLAInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        import torch

        from .config import load_config

        config = load_config(args.config)
        if args.command == "validate":
            print(run_validate(config, args))
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
