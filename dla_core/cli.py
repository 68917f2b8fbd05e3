"""Command line: ``python -m dla_core <command> ...``.

Subcommands are registered in :data:`COMMANDS` as ``(name, "module.path[:object]", help)``.
The target (a module, or an object inside it) exposes ``add_arguments(parser)`` and
``run(args) -> int | None``. It is imported only when its command runs (or its own
``--help`` is asked for), so ``python -m dla_core --help`` stays fast and a command's heavy
imports never slow the others. To add a command from another module, add one line here.

Errors the person can fix (:class:`DLAInputError`) print one line to stderr and exit with
code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Sequence

from .errors import DLAInputError

COMMANDS: list[tuple[str, str, str]] = [
    (
        "init-dla",
        "dla_core.cli:InitDLACommand",
        "write an untrained (random or identity-initialised) DLA checkpoint for an MLLM",
    ),
    (
        "inspect",
        "dla_core.cli:InspectCommand",
        "print a DLA checkpoint's config, tensor count and parameter count; --plot draws its layer map",
    ),
    (
        "generate",
        "dla_core.generate",
        "generate images from reference image(s) + a prompt (no model flags: embedded random self-test)",
    ),
    (
        "eval",
        "dla_core.eval",
        "DreamBench-style DINO / CLIP-I / CLIP-T of a folder of generations against reference images",
    ),
]

EXIT_INPUT_ERROR = 2


def _load_target(spec: str):
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only the ``selected`` command's module is imported to add its arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m dla_core",
        description="Subject-driven generation from a multimodal LLM: DLA checkpoints and tools (no ComfyUI needed).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name, target, help_text in COMMANDS:
        sub = subparsers.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".")
        sub.set_defaults(_target=target)
        if name == selected:
            _load_target(target).add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    known = {name for name, _, _ in COMMANDS}
    selected = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(selected if selected in known else None)
    args = parser.parse_args(argv)
    try:
        result = _load_target(args._target).run(args)
    except DLAInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    return int(result or 0)


# ---------------------------------------------------------------------- init-dla
class InitDLACommand:
    """``init-dla``: fresh DLA checkpoint from an MLLM folder's config.json (the model is not loaded)."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        from .dla import FUSE_MODES, INIT_MODES, TARGETS
        from .lap import POOL_MODES

        parser.add_argument(
            "--mllm",
            help="Hugging Face-format MLLM folder (only its config.json is read). Optional for the FLUX.2 and Krea 2 "
            "targets: without it the DLA is for the target's own ComfyUI text encoder (flux2: Mistral-Small-3 24B, "
            "5120 wide; flux2_klein: Qwen3-4B, 2560; flux2_klein_9b: Qwen3-8B, 4096; krea2: Qwen3-VL-4B, 2560)",
        )
        parser.add_argument(
            "--target",
            default="flux",
            choices=sorted(TARGETS),
            help="DiT the conditioning is for (default: flux). "
            + "; ".join(f"{name}: {spec.description}" for name, spec in sorted(TARGETS.items())),
        )
        parser.add_argument(
            "--init",
            default="random",
            choices=INIT_MODES,
            help="random, or identity: the untrained DLA reproduces one layer's hidden states exactly (FLUX.2 "
            "targets: it selects the native layers, e.g. 10, 20, 30, and stacks them, reproducing native FLUX.2 "
            "conditioning bit for bit)",
        )
        parser.add_argument(
            "--identity-layer", type=int, default=-1, help="layer the identity init selects (default -1: the last)"
        )
        parser.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
        parser.add_argument(
            "--lap-width", type=int, help="LAP width (default: min(1024, MLLM width); identity: the MLLM width)"
        )
        parser.add_argument("--lap-heads", type=int, help="attention heads of the LAP blocks")
        parser.add_argument(
            "--lap-blocks",
            type=int,
            help="transformer blocks per LAP (default 2; 0 keeps only the pooling map, e.g. for a smaller FLUX.2 "
            "identity DLA)",
        )
        parser.add_argument("--lap-mlp-hidden", type=int, help="MLP hidden size of the LAP blocks")
        parser.add_argument(
            "--pool",
            choices=POOL_MODES,
            help="LAP pooling: flatten (full FC over layers, default), weighted (factorised; "
            "much smaller, advised with --init identity at 8B widths) or stack (every layer in its own slot; the "
            "krea2 identity default)",
        )
        parser.add_argument("--null-length", type=int, help="length of the learned 'MLLM off' sequence (default 16)")
        parser.add_argument(
            "--fuse",
            choices=FUSE_MODES,
            help="token order of the fused output: concat_text_first (default), concat_image_first, or sequence "
            "(the MLLM's own token order; with --init identity --target qwen_image it reproduces native Qwen-Image "
            "conditioning)",
        )
        parser.add_argument("--out", required=True, help="output file, .safetensors")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from .checkpoint import init_dla, save_dla
        from .dla import target_spec
        from .spec import read_mllm_spec

        native = target_spec(args.target).native
        if args.mllm:
            spec = read_mllm_spec(args.mllm)
        elif native is not None:
            spec = native.spec()
        else:
            raise DLAInputError(
                f"--mllm is required for target '{args.target}': give the Hugging Face-format MLLM folder the DLA "
                "reads (only the FLUX.2 and Krea 2 targets default to their own text encoder)."
            )
        overrides = {
            key: value
            for key, value in (
                ("lap_width", args.lap_width),
                ("lap_heads", args.lap_heads),
                ("lap_blocks", args.lap_blocks),
                ("lap_mlp_hidden", args.lap_mlp_hidden),
                ("lap_pool", args.pool),
                ("null_length", args.null_length),
                ("fuse", args.fuse),
            )
            if value is not None
        }
        dla = init_dla(
            spec, target=args.target, init=args.init, identity_layer=args.identity_layer, seed=args.seed, **overrides
        )
        path = save_dla(dla, args.out)
        print(
            f"wrote {path}: {args.init} DLA for {spec.describe()} -> {args.target}, {dla.num_parameters():,} parameters"
        )
        return 0


# ---------------------------------------------------------------------- inspect
class InspectCommand:
    """``inspect``: a checkpoint's config (header only) plus tensor and parameter counts; optional layer map.

    ``--plot OUT.png`` draws which MLLM layers the DLA draws on (:mod:`dla_core.layer_map`). With an
    encoding (``--mllm``, ``--prompt``, ``--reference``) it is the LAPs' attention averaged over that
    encoding's text and image tokens; without one, the pooling maps' weights per layer, and it says so.
    """

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", help="DLA checkpoint (.safetensors)")
        parser.add_argument(
            "--plot",
            metavar="OUT.png",
            help="draw the DLA's layer map (share of its output per MLLM layer, text and image tokens) as a PNG",
        )
        parser.add_argument(
            "--mllm",
            help="Hugging Face-format MLLM folder the DLA is for: encode --prompt + --reference with it and map "
            "the LAPs' attention over that encoding (without it: the pooling weights only)",
        )
        parser.add_argument("--prompt", help="instruction to encode with --mllm")
        parser.add_argument(
            "--reference", action="append", help="reference image to encode with --mllm (repeat for several)"
        )
        parser.add_argument("--mllm-image-size", type=int, help="MLLM-side reference resolution in px")
        parser.add_argument("--dtype", default="auto", help="MLLM dtype: auto (the folder's), bf16, fp16, fp32")
        parser.add_argument("--device", default="cpu", help="device for the MLLM and the DLA (default cpu)")
        parser.add_argument("--width", type=int, default=768, help="plot width in pixels (default 768)")
        parser.add_argument("--height", type=int, default=512, help="plot height in pixels (default 512)")

    @staticmethod
    def check_layer_map_args(args: argparse.Namespace) -> None:
        """Refuse inconsistent layer-map flags before anything is read or printed."""
        if args.plot and Path(args.plot).suffix.lower() != ".png":
            raise DLAInputError(f"--plot writes a PNG: give a file name ending in .png, got '{Path(args.plot).name}'.")
        if not args.mllm and (args.prompt or args.reference):
            raise DLAInputError("--prompt and --reference are encoded with an MLLM: give its folder with --mllm.")
        if args.mllm:
            missing = [
                flag for flag, value in (("--prompt", args.prompt), ("--reference", args.reference)) if not value
            ]
            if missing:
                raise DLAInputError(
                    f"With --mllm, give {' and '.join(missing)}: the layer map averages over that encoding."
                )

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from .checkpoint import read_dla_header

        InspectCommand.check_layer_map_args(args)
        path, config, header = read_dla_header(args.file)
        tensors = {name: info for name, info in header.items() if name != "__metadata__"}
        params = 0
        for info in tensors.values():
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            params += count
        dtypes = sorted({info["dtype"] for info in tensors.values()})
        print(f"{path.name}")
        for key, value in config.to_dict().items():
            print(f"  {key}: {value}")
        print(f"  tensors: {len(tensors)} ({', '.join(dtypes)})")
        print(f"  parameters: {params:,}")
        if args.plot or args.mllm or args.prompt or args.reference:
            InspectCommand.layer_map(args, path)
        return 0

    @staticmethod
    def layer_map(args: argparse.Namespace, path) -> None:
        import torch
        from PIL import Image

        from .checkpoint import load_dla
        from .layer_map import layer_attention, plot_layer_map, readout_map, summarize

        dla = load_dla(path, device=args.device, dtype=torch.float32)
        if args.mllm:
            from .mllm import encode_joint, load_mllm
            from .pipeline import load_reference_image
            from .spec import read_mllm_spec

            dla.check_compatible(read_mllm_spec(args.mllm))  # before loading any weights
            mllm = load_mllm(args.mllm, dtype=args.dtype, device=args.device)
            references = [load_reference_image(reference) for reference in args.reference]
            with torch.no_grad():
                features = encode_joint(
                    mllm, args.prompt, references, image_size=args.mllm_image_size, layers=dla.config.used_layers
                )
            layer_map = layer_attention(dla, features, title=path.name)
        else:
            print("  layer map: no encoding given (--mllm, --prompt, --reference): pooling weights only")
            layer_map = readout_map(dla, title=path.name)
        print("  " + summarize(layer_map).replace("\n", "\n  "))
        if args.plot:
            out = Path(args.plot)
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(plot_layer_map(layer_map, args.width, args.height)).save(out)
            print(f"wrote {out}")
