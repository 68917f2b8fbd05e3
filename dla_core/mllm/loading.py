"""Finding and loading a local vision-language model folder: weights, processor, chat template, dtype.

Every problem with a folder (missing or pickled weights, a corrupt shard, no tokenizer, no image
processor in either layout transformers writes, no chat template, a family the installed transformers
lacks) raises :class:`DLAInputError` naming the folder or file and the fix, before or instead of a
transformers traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from ..dtypes import DTYPES, TORCH_DTYPE_NAMES
from ..errors import DLAInputError
from ..spec import MLLMSpec, read_mllm_spec


@dataclass
class LoadedMLLM:
    """A loaded vision-language model ready for :func:`dla_core.mllm.encode_joint`.

    ``model`` is the transformers ``*ForConditionalGeneration`` module; it may be moved between
    devices after loading (ComfyUI's ModelPatcher does): encoding runs wherever its parameters
    are at call time. ``forward_calls`` counts real backbone forwards.
    """

    model: nn.Module
    processor: Any
    spec: MLLMSpec
    dtype: torch.dtype
    name: str
    folder: Path
    forward_calls: int = 0

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _model_class(family: str):
    import transformers

    names = {
        "internvl": "InternVLForConditionalGeneration",
        "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
        "qwen3_vl": "Qwen3VLForConditionalGeneration",
        "mistral3": "Mistral3ForConditionalGeneration",
    }
    cls = getattr(transformers, names[family], None)
    if cls is None:
        raise DLAInputError(
            f"The installed transformers {transformers.__version__} has no {names[family]}. "
            "Upgrade transformers (pip install -U transformers) to use this model family."
        )
    return cls


def transformers_major() -> int:
    """The installed transformers' major version (4 or 5: some processor call arguments differ)."""
    import transformers

    return int(transformers.__version__.split(".")[0])


def resolve_dtype(dtype: str | torch.dtype, folder_dtype: torch.dtype | None) -> torch.dtype:
    """``"auto"`` -> the folder's own dtype (``torch_dtype``/``dtype`` in config.json), fp32 if it names none.

    "auto" never depends on the load device: ComfyUI loads on the CPU and moves the model to
    the GPU later, so the folder's dtype (bf16 for InternVL3 / Qwen-VL) is what a GPU should
    run. On a CPU-only machine pick "fp32" explicitly for speed.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise DLAInputError(f"MLLM dtype {dtype} is not supported; use bf16, fp16 or fp32.")
        return dtype
    if dtype == "auto":
        return folder_dtype or torch.float32
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise DLAInputError(f"Unknown MLLM dtype '{dtype}'; use one of: auto, {', '.join(DTYPES)}.")


def _folder_dtype(folder: Path) -> torch.dtype | None:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    for source in (config, config.get("text_config") or {}):
        name = source.get("torch_dtype") or source.get("dtype")
        if name in TORCH_DTYPE_NAMES:
            return TORCH_DTYPE_NAMES[name]
    return None


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError) as exc:
            raise DLAInputError(f"'{index}' is unreadable ({exc}). Re-download the model's index file.") from exc
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise DLAInputError(
                f"MLLM folder '{folder.name}' is incomplete: {', '.join(missing)} listed in "
                "model.safetensors.index.json is missing. Finish the download of all weight shards."
            )
        return [folder / name for name in shards]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
    if pickled:
        raise DLAInputError(
            f"MLLM folder '{folder.name}' has only pickled weights ({', '.join(pickled)}); this pack loads "
            "safetensors only, never pickles. Download the safetensors version of the model."
        )
    raise DLAInputError(
        f"MLLM folder '{folder.name}' has no weights (model.safetensors or model.safetensors.index.json). "
        "Download the complete model folder."
    )


def _check_safetensors(files: list[Path]) -> None:
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise DLAInputError(
                f"Weight file '{path}' is corrupt or truncated ({exc}). Delete it and download it again."
            ) from exc


def _check_tokenizer_files(folder: Path) -> None:
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise DLAInputError(
            f"MLLM folder '{folder.name}' has no tokenizer (tokenizer.json / tokenizer_config.json). "
            "Download the tokenizer files of the model too."
        )


def _image_processor_entry(folder: Path) -> tuple[str, dict] | None:
    """(file, settings) of the folder's image processor in either layout transformers writes, or None.

    transformers 4.x saves it as ``preprocessor_config.json``; transformers 5 saves it as the
    ``"image_processor"`` entry of ``processor_config.json`` (and no preprocessor_config.json).
    """
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        entry = data.get(key) if key and isinstance(data, dict) else data
        if isinstance(entry, dict):
            return name, entry
    return None


def _no_image_processor_error(folder: Path) -> DLAInputError:
    return DLAInputError(
        f"MLLM folder '{folder.name}' has no image processor (preprocessor_config.json) and its "
        'processor_config.json has no "image_processor" entry (the transformers 5 layout). '
        "Download the processor files of the model too."
    )


def _plain_size(size) -> dict:
    items = size.items() if isinstance(size, dict) else vars(size).items() if hasattr(size, "__dict__") else ()
    return {key: value for key, value in items if value is not None}


def _load_processor(folder: Path):
    """The folder's own processor (``AutoProcessor``, local files only), checked to be vision-language.

    Both processor layouts are accepted when the installed transformers loads them: 4.x
    ``preprocessor_config.json`` and transformers 5's ``processor_config.json`` holding the image
    processor. A folder with neither gets a clear error (an AutoProcessor given no image processor
    settings may silently build one with the family's defaults, so the files are checked first).
    """
    import transformers
    from transformers import AutoProcessor

    found = _image_processor_entry(folder)
    if found is None:
        raise _no_image_processor_error(folder)
    source, entry = found
    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise DLAInputError(
            f"Cannot load the processor/tokenizer of MLLM folder '{folder.name}' with transformers "
            f"{transformers.__version__}: {exc}. The folder needs the model's tokenizer and processor files "
            "(tokenizer.json, processor_config.json and/or preprocessor_config.json); a folder saved by a newer "
            "transformers may need that version (pip install -U transformers)."
        ) from exc
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise DLAInputError(
            f"MLLM folder '{folder.name}' loads a {type(processor).__name__}, not a vision-language processor. "
            "Download the processor files (preprocessor_config.json, processor_config.json) of the model."
        )
    if source == "processor_config.json" and "size" in entry:
        # A transformers that does not read the transformers 5 layout would fall back to default settings.
        loaded = _plain_size(getattr(processor.image_processor, "size", None) or {})
        if loaded != _plain_size(entry["size"]):
            raise DLAInputError(
                f"transformers {transformers.__version__} did not read the image processor settings that MLLM "
                f"folder '{folder.name}' keeps in processor_config.json (the transformers 5 layout): it uses size "
                f"{loaded}, the folder says {entry['size']}. Upgrade transformers (pip install -U transformers)."
            )
    return processor


def load_mllm(folder: str | Path, dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu") -> LoadedMLLM:
    """Load a local HF-format vision-language model folder (InternVL -hf, Qwen2.5-VL, Qwen3-VL, Mistral-3).

    Mistral-3 is ``Mistral3ForConditionalGeneration`` (Mistral-Small-3.1/3.2 24B with its Pixtral
    vision tower): the vision-language form of FLUX.2 [dev]'s text encoder, so a FLUX.2 DLA can read
    a reference image jointly with the text (features of family ``mistral3``, 41 x 5120).

    ``dtype``: "auto" (the folder's own dtype, see :func:`resolve_dtype`), "bf16", "fp16",
    "fp32" or a ``torch.dtype``. ``device``: where the weights are put after loading.
    Files are only read locally (``local_files_only=True``); ``trust_remote_code`` is never on.
    Every problem with the folder raises :class:`DLAInputError` naming the folder or file.
    """
    folder = Path(folder)
    spec = read_mllm_spec(folder)
    torch_dtype = resolve_dtype(dtype, _folder_dtype(folder))
    weights = _weight_files(folder)
    _check_safetensors(weights)
    _check_tokenizer_files(folder)
    processor = _load_processor(folder)
    if not getattr(processor, "chat_template", None):
        raise DLAInputError(
            f"MLLM folder '{folder.name}' has no chat template (chat_template.jinja / chat_template.json). "
            "Download the model's chat template file too."
        )
    model_class = _model_class(spec.family)
    try:
        model = model_class.from_pretrained(
            folder, dtype=torch_dtype, local_files_only=True, trust_remote_code=False, use_safetensors=True
        )
    except Exception as exc:
        raise DLAInputError(f"Cannot load the weights of MLLM folder '{folder.name}': {exc}") from exc
    model.eval().requires_grad_(False)
    model.to(device)
    return LoadedMLLM(model=model, processor=processor, spec=spec, dtype=torch_dtype, name=folder.name, folder=folder)
