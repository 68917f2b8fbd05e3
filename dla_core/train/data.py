"""The training manifest (JSONL) and the dataset over the prepared feature cache.

Manifest: one JSON object per line, ``{"reference": path | [paths], "prompt": str, "target": path}``;
relative image paths resolve against the manifest's folder. :func:`read_manifest` validates every
line (files exist, are readable RGB images, prompt not empty) by reading image headers only, so a
bad manifest fails in seconds, before any model is loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from safetensors import safe_open

from ..errors import DLAInputError

MANIFEST_KEYS = ("reference", "prompt", "target")
OPTIONAL_MANIFEST_KEYS = ("id",)
ACCEPTED_IMAGE_MODES = ("RGB",)

# The cache ``prepare`` writes and :class:`CachedFeatureDataset` reads: an index file and numbered shards.
CACHE_INDEX = "cache.json"
# 8-bit float storage of the MLLM hidden states: e4m3 (3 mantissa bits, max 448) with one float32 scale per layer
# and token (MLLM hidden states hold outliers of thousands, far beyond e4m3's range without a scale).
FP8_STORAGE = "float8_e4m3fn"
FP8_MAX = 448.0


def store_hidden_states(hidden: torch.Tensor, storage: str) -> dict[str, torch.Tensor]:
    """[layers, tokens, width] -> the tensors a shard holds for them: ``hidden_states`` in ``storage`` dtype
    (bfloat16 / float16 / float32 / float8_e4m3fn) and, for float8, ``hidden_scale`` [layers, tokens, 1] float32."""
    if storage != FP8_STORAGE:
        return {"hidden_states": hidden.to("cpu", getattr(torch, storage)).contiguous()}
    hidden = hidden.float().cpu()
    scale = (hidden.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    quantized = (hidden / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return {"hidden_states": quantized.contiguous(), "hidden_scale": scale.contiguous()}


def load_hidden_states(hidden: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Inverse of :func:`store_hidden_states`: float8 values times their scale (float32); other dtypes as stored."""
    return hidden if scale is None else hidden.float() * scale


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def write_json_atomic(path: Path, data) -> None:
    """Write ``data`` as JSON so that a reader sees the old file or the new one, never a half-written one.

    Written beside ``path`` under a name of this process, then moved over it (``os.replace`` is atomic);
    several processes may write the same content at once.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


@dataclass(frozen=True)
class ManifestRecord:
    """One training example: reference image(s), instruction, target image."""

    index: int  # 0-based line number among non-empty lines
    references: tuple[str, ...]
    prompt: str
    target: str
    id: str = ""
    target_size: tuple[int, int] | None = None  # (width, height) from the header; None when images were not checked


def _check_image(path: Path, where: str, role: str) -> tuple[int, int]:
    """Header checks of one image; returns its (width, height)."""
    if not path.is_file():
        raise DLAInputError(f"{where}: {role} image '{path}' does not exist. Fix the path or remove the line.")
    try:
        with Image.open(path) as image:  # lazy: reads the header only
            mode, size = image.mode, image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DLAInputError(
            f"{where}: {role} '{path}' is not a readable image ({exc}). Re-export it as PNG or JPEG."
        ) from exc
    if mode not in ACCEPTED_IMAGE_MODES:
        raise DLAInputError(
            f"{where}: {role} image '{path}' has mode {mode}; training needs RGB images. "
            "Convert it first (e.g. PIL: Image.open(p).convert('RGB').save(p)); for RGBA, flatten on a background you "
            "choose."
        )
    return size


def read_manifest(path: str | Path, check_images: bool = True) -> list[ManifestRecord]:
    """Parse and validate a JSONL manifest. Raises :class:`DLAInputError` naming the line and the fix."""
    path = Path(path)
    if not path.is_file():
        raise DLAInputError(
            f"Manifest '{path}' does not exist. Set data.manifest to a JSONL file of reference/prompt/target lines."
        )
    base = path.parent
    records: list[ManifestRecord] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {line_no}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DLAInputError(f"{where} is not valid JSON ({exc.msg}). Each line must be one JSON object.") from exc
        if not isinstance(item, dict):
            raise DLAInputError(f"{where} must be a JSON object with keys {', '.join(MANIFEST_KEYS)}.")
        missing = [k for k in MANIFEST_KEYS if k not in item]
        if missing:
            raise DLAInputError(f"{where} lacks {', '.join(missing)}; every line needs {', '.join(MANIFEST_KEYS)}.")
        unknown = sorted(set(item) - set(MANIFEST_KEYS) - set(OPTIONAL_MANIFEST_KEYS))
        if unknown:
            raise DLAInputError(
                f"{where} has unknown key(s) {unknown}; allowed: {', '.join(MANIFEST_KEYS + OPTIONAL_MANIFEST_KEYS)}."
            )
        prompt = item["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DLAInputError(f"{where} has an empty prompt; write the instruction for this target image.")
        refs = item["reference"]
        refs = [refs] if isinstance(refs, str) else refs
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r for r in refs):
            raise DLAInputError(f"{where}: 'reference' must be a path or a non-empty list of paths.")
        target = item["target"]
        if not isinstance(target, str) or not target:
            raise DLAInputError(f"{where}: 'target' must be a path to the target image.")
        ref_paths = tuple(str(p if (p := Path(r).expanduser()).is_absolute() else base / p) for r in refs)
        target_path = Path(target).expanduser()
        target_path = target_path if target_path.is_absolute() else base / target_path
        target_size = None
        if check_images:
            for r in ref_paths:
                _check_image(Path(r), where, "reference")
            target_size = _check_image(target_path, where, "target")
        records.append(
            ManifestRecord(
                len(records), ref_paths, prompt.strip(), str(target_path), str(item.get("id", "")), target_size
            )
        )
    if not records:
        raise DLAInputError(
            f"Manifest '{path}' holds no examples. Add lines like "
            '{"reference": "ref.png", "prompt": "the dog on a beach", "target": "target.png"}.'
        )
    return records


# ----------------------------------------------------------------------------- cached dataset


class CachedFeatureDataset:
    """Map-style dataset over the shards written by ``prepare`` (one item = one manifest line).

    An item is a dict: ``hidden_states`` [layers, tokens, width], ``image_mask`` / ``text_mask``
    [tokens] bool, ``target`` [C, H, W], ``references`` list of [C, h, w], ``prompt``, ``index``.
    Shards are opened lazily (memory-mapped by safetensors) and kept open per worker.
    """

    def __init__(self, cache_dir: str | Path):
        self.cache_dir = Path(cache_dir)
        index_file = self.cache_dir / CACHE_INDEX
        if not index_file.is_file():
            raise DLAInputError(
                f"No prepared cache in '{self.cache_dir}'. Run `python -m dla_core.train prepare --config <yaml>` "
                "first."
            )
        self.index = json.loads(index_file.read_text())
        self.num_samples = int(self.index["num_samples"])
        self.shard_size = int(self.index["shard_size"])
        missing = [
            shard_name(s)
            for s in range(int(self.index["num_shards"]))
            if not (self.cache_dir / shard_name(s)).is_file()
        ]
        if missing:
            raise DLAInputError(
                f"The cache in '{self.cache_dir}' is incomplete: {len(missing)} shard(s) missing "
                f"({', '.join(missing[:3])}...). "
                "Run `python -m dla_core.train prepare --config <yaml>` again; it resumes where it stopped."
            )
        # Target bucket (width, height) per sample; a cache from before buckets holds square targets.
        resolution = int(self.index.get("resolution", 0))
        self.buckets = [tuple(b) for b in self.index.get("buckets", [[resolution, resolution]] * self.num_samples)]
        self._shard_name = shard_name
        self._handles: dict[int, object] = {}
        self._prompts: dict[int, str] = {}
        self.feature_meta = json.loads(self._handle(0).metadata()["features"])
        self.feature_source = f"the MLLM the cache '{self.cache_dir}' was prepared with"

    def _handle(self, shard: int):
        if shard not in self._handles:
            handle = safe_open(str(self.cache_dir / self._shard_name(shard)), framework="pt")
            fingerprint = (handle.metadata() or {}).get("fingerprint")
            if fingerprint != self.index["fingerprint"]:
                raise DLAInputError(
                    f"Shard {shard} in '{self.cache_dir}' belongs to another prepare run; delete the cache folder and "
                    "prepare again."
                )
            self._handles[shard] = handle
            for sample in json.loads(handle.metadata()["samples"]):
                self._prompts[int(sample["index"])] = sample["prompt"]
        return self._handles[shard]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        handle = self._handle(index // self.shard_size)
        names = set(handle.keys())
        keys = [k for k in names if k.startswith(f"{index}.reference.")]
        scale = handle.get_tensor(f"{index}.hidden_scale") if f"{index}.hidden_scale" in names else None
        return {
            "index": index,
            "prompt": self._prompts[index],
            "hidden_states": load_hidden_states(handle.get_tensor(f"{index}.hidden_states"), scale),
            "image_mask": handle.get_tensor(f"{index}.image_mask"),
            "text_mask": handle.get_tensor(f"{index}.text_mask"),
            "target": handle.get_tensor(f"{index}.target"),
            "references": [handle.get_tensor(f"{index}.reference.{k}") for k in range(len(keys))],
        }

    def __getstate__(self):  # DataLoader workers reopen shards themselves
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


def collate_samples(items: list[dict]) -> dict:
    """Right-pad MLLM tokens to the longest sample; targets are stacked, references stay per sample.

    Returns ``hidden_states`` [batch, layers, tokens, width], ``image_mask`` / ``text_mask`` /
    ``attention_mask`` [batch, tokens] bool, ``target`` [batch, C, H, W], ``references``
    (list over samples of lists of [C, h, w]), ``prompts``, ``indices``.
    """
    longest = max(item["hidden_states"].shape[1] for item in items)
    layers, _, width = items[0]["hidden_states"].shape
    hidden = items[0]["hidden_states"].new_zeros(len(items), layers, longest, width)
    image_mask = torch.zeros(len(items), longest, dtype=torch.bool)
    text_mask = torch.zeros_like(image_mask)
    attention_mask = torch.zeros_like(image_mask)
    for row, item in enumerate(items):
        length = item["hidden_states"].shape[1]
        hidden[row, :, :length] = item["hidden_states"]
        image_mask[row, :length] = item["image_mask"]
        text_mask[row, :length] = item["text_mask"]
        attention_mask[row, :length] = True
    return {
        "hidden_states": hidden,
        "image_mask": image_mask,
        "text_mask": text_mask,
        "attention_mask": attention_mask,
        "target": torch.stack([item["target"] for item in items]),
        "references": [item["references"] for item in items],
        "prompts": [item["prompt"] for item in items],
        "indices": [item["index"] for item in items],
    }
