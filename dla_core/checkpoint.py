"""DLA checkpoints: safetensors weights with the full :class:`DLAConfig` as JSON metadata.

File layout (plain safetensors, readable by any safetensors tool):

* tensors: the module's ``state_dict()``, names as in :class:`DualLayerAggregation`;
* metadata: ``format`` = ``"comfyui-dla-subject/dla"``, ``format_version`` = ``"1"``,
  ``config`` = ``json.dumps(DLAConfig.to_dict())``.

Nothing is ever unpickled: ``.pt`` / ``.ckpt`` / ``.bin`` files are refused before opening.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .dla import DLAConfig, DualLayerAggregation, target_spec
from .errors import DLACheckpointError, DLAInputError
from .spec import MLLMSpec

FORMAT_NAME = "comfyui-dla-subject/dla"
FORMAT_VERSION = "1"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit

_RECREATE = "re-download it or re-create it with `python -m dla_core init-dla`"


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise DLACheckpointError(
            f"'{path.name}' is a pickle-based file ({path.suffix}); this pack loads DLA weights only from .safetensors "
            "because unpickling can run arbitrary code. Use the .safetensors version of the checkpoint."
        )
    if not path.is_file():
        raise DLACheckpointError(
            f"DLA checkpoint '{path}' does not exist. Put the .safetensors file under ComfyUI/models/dla/ "
            "or create one with `python -m dla_core init-dla`."
        )
    return path


def _read_header(path: Path) -> dict[str, Any]:
    """Parse the safetensors JSON header (no tensor data is read)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise DLACheckpointError(
                    f"DLA checkpoint '{path.name}' is truncated or not a safetensors file; {_RECREATE}."
                )
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(MAX_HEADER_BYTES, size - 8):
                raise DLACheckpointError(
                    f"DLA checkpoint '{path.name}' is corrupt or not a safetensors file (bad header size); {_RECREATE}."
                )
            raw = handle.read(header_len)
    except OSError as exc:
        raise DLACheckpointError(f"Cannot read DLA checkpoint '{path}': {exc}.") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DLACheckpointError(
            f"DLA checkpoint '{path.name}' is corrupt or not a safetensors file (unreadable header); {_RECREATE}."
        ) from None
    if not isinstance(header, dict):
        raise DLACheckpointError(f"DLA checkpoint '{path.name}' is corrupt (header is not a JSON object); {_RECREATE}.")
    data_len = max(
        (
            int(v["data_offsets"][1])
            for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
        ),
        default=0,
    )
    if 8 + header_len + data_len > size:
        raise DLACheckpointError(
            f"DLA checkpoint '{path.name}' is truncated ({size} bytes, header says {8 + header_len + data_len}); "
            f"{_RECREATE}."
        )
    return header


def _config_from_header(path: Path, header: dict[str, Any]) -> DLAConfig:
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT_NAME or "config" not in metadata:
        raise DLACheckpointError(
            f"'{path.name}' is a safetensors file but not a DLA checkpoint (no '{FORMAT_NAME}' metadata with a "
            "config). "
            "Pick a DLA checkpoint, or create one with `python -m dla_core init-dla`."
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise DLACheckpointError(
            f"DLA checkpoint '{path.name}' has format version {metadata.get('format_version')!r}; this pack reads "
            "version "
            f"{FORMAT_VERSION}. Update the pack or re-create the checkpoint."
        )
    try:
        data = json.loads(metadata["config"])
    except json.JSONDecodeError:
        raise DLACheckpointError(
            f"DLA checkpoint '{path.name}' has an unreadable config in its metadata; {_RECREATE}."
        ) from None
    try:
        return DLAConfig.from_dict(data)
    except DLAInputError as exc:
        raise DLACheckpointError(f"DLA checkpoint '{path.name}': {exc}") from None


def read_dla_header(path: str | Path) -> tuple[Path, DLAConfig, dict[str, Any]]:
    """``(path, config, header)`` of a checkpoint from its safetensors header only (no tensors are loaded).

    ``header`` is the raw JSON header: ``{tensor name: {"dtype", "shape", "data_offsets"}}`` plus ``__metadata__``.
    """
    path = _check_path(path)
    header = _read_header(path)
    return path, _config_from_header(path, header), header


def read_dla_config(path: str | Path) -> DLAConfig:
    """Read a checkpoint's :class:`DLAConfig` from its header only (no tensors are loaded)."""
    return read_dla_header(path)[1]


def save_dla(dla: DualLayerAggregation, path: str | Path) -> Path:
    """Write ``dla`` to ``path`` (.safetensors) with its config in the metadata; returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise DLAInputError(
            f"DLA checkpoints are written as .safetensors; got '{path.name}'. Use a name ending in .safetensors."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in dla.state_dict().items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(dla.config.to_dict(), sort_keys=True),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_dla(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> DualLayerAggregation:
    """Load a DLA checkpoint; validates format, config and tensor names/shapes. Eval mode, no grad."""
    path = _check_path(path)
    config = _config_from_header(path, _read_header(path))
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DLACheckpointError(f"DLA checkpoint '{path.name}' is corrupt ({exc}); {_RECREATE}.") from None
    with torch.device("meta"):
        dla = DualLayerAggregation(config)
    expected = {name: tuple(t.shape) for name, t in dla.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise DLACheckpointError(
            f"DLA checkpoint '{path.name}' does not match its own config: missing tensors {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected tensors {extra[:5]}{'...' if len(extra) > 5 else ''}; "
            f"{_RECREATE}."
        )
    wrong = [
        f"{name} {tuple(tensors[name].shape)} != {shape}"
        for name, shape in expected.items()
        if tuple(tensors[name].shape) != shape
    ]
    if wrong:
        raise DLACheckpointError(
            f"DLA checkpoint '{path.name}' has tensors of the wrong shape ({'; '.join(wrong[:3])}); {_RECREATE}."
        )
    dla.load_state_dict(tensors, assign=True)
    dla.to(device=device, dtype=dtype)
    dla.eval().requires_grad_(False)
    return dla


def _default_heads(width: int, preferred: int = 16) -> int:
    for heads in range(min(preferred, width), 0, -1):
        if width % heads == 0:
            return heads
    return 1


def _native_identity_defaults(spec: MLLMSpec, target: str, overrides: dict[str, Any]) -> None:
    """Identity init for a target whose own text encoder is an LLM (FLUX.2): read and stack its native layers.

    The LAPs read only the native layers (``layer_indices``) and stack them per token in the
    native order; tokens keep the encoder's own order (``fuse="sequence"``). The untrained DLA
    then returns exactly the target's native conditioning from features of that encoder. A joint MLLM of the
    encoder's shape (Qwen3-VL-4B for [klein] 4B) gets the same layer choice, so training starts beside native
    conditioning.
    """
    native = target_spec(target).native
    if spec.family not in native.reader_families:
        joint = f" or a joint MLLM of the same shape, {native.joint_name} ({', '.join(native.joint_families)})"
        raise DLAInputError(
            f"Identity initialisation for target '{target}' reproduces its own text encoder, {native.name} "
            f"(family {native.family}){joint if native.joint_families else ''}; this MLLM is {spec.describe()}. "
            "Use --init random for another MLLM, or the target whose text encoder this is."
        )
    layers = list(overrides.get("layer_indices") or native.layers)
    if any(not 0 <= layer < spec.num_layers for layer in layers):
        raise DLAInputError(
            f"Target '{target}' reads layers {list(native.layers)} of {native.name}, but this MLLM has only "
            f"{spec.num_layers} hidden states ({spec.describe()})."
        )
    overrides.setdefault("layer_indices", layers)
    overrides.setdefault("identity_layers", list(range(len(layers))))
    overrides.setdefault(
        "lap_out_width", len(overrides["identity_layers"]) * int(overrides.get("lap_width", spec.width))
    )
    overrides.setdefault("fuse", "sequence")
    if target_spec(target).layer_slots:  # Krea 2 fuses the layers itself: one slot per layer, one shared map
        overrides.setdefault("lap_pool", "stack")
        overrides.setdefault("output_slots", len(layers))
    context_width = int(overrides.get("context_width", target_spec(target).context_width))
    if overrides["lap_out_width"] != context_width:
        raise DLAInputError(
            f"Target '{target}' takes {context_width}-wide tokens: {len(layers)} stacked layers of {native.name} "
            f"({native.width} wide). This {spec.family} MLLM is {spec.width} wide, so identity initialisation "
            "cannot reproduce the native conditioning; use --init random."
        )


def init_dla(
    spec: MLLMSpec,
    target: str = "flux",
    init: str = "random",
    identity_layer: int = -1,
    seed: int = 0,
    **overrides: Any,
) -> DualLayerAggregation:
    """A fresh, untrained DLA for an MLLM (``spec``) and a target DiT.

    Defaults scale with the MLLM: ``lap_width = min(1024, mllm width)``, heads dividing it
    (up to 16), MLP hidden ``min(4 * lap_width, 4096)``. ``init="identity"`` sets
    ``lap_width`` to the MLLM width and turns the input norm off so the untrained DLA
    reproduces layer ``identity_layer`` (-1 = last) exactly; at InternVL3-8B widths that makes
    the LAPs 3584 wide (about 1.09 B parameters with the flatten pool, 0.37 B with
    ``lap_pool="weighted"``; the random default is 0.13 B). For a target with its own LLM text
    encoder (FLUX.2: ``flux2``, ``flux2_klein``, ``flux2_klein_9b``), identity reads only that
    encoder's native layers (e.g. 10, 20, 30) and stacks them per token, so the untrained DLA
    reproduces the native conditioning bit for bit from that encoder's features; with
    ``lap_blocks=0`` it holds only the stacking maps (3 x 236 M parameters at FLUX.2 [dev]'s
    15360). ``overrides`` set any other
    :class:`DLAConfig` field. The same ``seed`` gives the same weights.
    """
    target_info = target_spec(target)
    identity = init == "identity"
    if identity and target_info.native is not None:
        _native_identity_defaults(spec, target, overrides)
    lap_width = int(overrides.pop("lap_width", spec.width if identity else min(1024, spec.width)))
    fields: dict[str, Any] = dict(
        mllm_family=spec.family,
        mllm_name=spec.name,
        num_layers=spec.num_layers,
        mllm_width=spec.width,
        lap_width=lap_width,
        lap_heads=_default_heads(lap_width),
        lap_mlp_hidden=min(4 * lap_width, 4096),
        lap_input_norm=not identity,
        target=target,
        context_width=target_info.context_width,
        pooled_width=target_info.pooled_width,
        init=init,
        identity_layer=identity_layer,
    )
    fields.update(overrides)
    try:
        config = DLAConfig(**fields)
    except TypeError as exc:
        raise DLAInputError(f"init_dla got an unknown DLA setting: {exc}.") from None
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        dla = DualLayerAggregation(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return dla
