"""Joint MLLM encoding: load a local vision-language model and capture every layer's hidden states.

One chat sequence per sample holds the reference image(s) and the instruction, built by the
model's own processor and chat template. Only the backbone runs (vision tower, projector,
language model; never the LM head), with ``use_cache=False``; forward hooks copy each
layer's state into one preallocated ``[batch, layers, tokens, width]`` tensor while the
forward runs, in the model's dtype.

Layer convention (identical to transformers' ``output_hidden_states=True`` tuple of the
multimodal backbone, ``model.model``): layer 0 is the input of the first decoder layer
(token embeddings with the image features merged in), layer k (1 <= k < N) the input of
decoder layer k (= the output of decoder layer k-1, plus Qwen3-VL's deepstack visual features
where the model adds them), layer N (the last) the output of the final norm. For InternVL
and Qwen2.5-VL this also equals ``model(...)``'s tuple; Qwen3-VL's
``Qwen3VLForConditionalGeneration`` in transformers 4.57 returns the last decoder output
*before* the final norm as its last entry, unlike its own backbone: we follow the backbone,
so the last layer is always post-norm for every family. transformers 5 records Qwen3-VL's
deepstack layers before the deepstack addition (4.x added it in place into the recorded
tensor); the capture here is the same on both: what decoder layer k reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from safetensors import safe_open
from torch import nn

from .checks import (
    BATCH_ENV,
    REFERENCES_ENV,
    check_count,
    check_prompt_tokens,
    max_batch,
    max_references,
)
from .dtypes import DTYPES, TORCH_DTYPE_NAMES
from .errors import DLAInputError
from .features import MLLMFeatures
from .images import MIN_IMAGE_SIDE, resize_for_mllm, to_pil_list
from .spec import MLLMSpec, read_mllm_spec

MAX_IMAGE_SIZE = 4096  # px; an MLLM-side reference resolution beyond this is surely a typo
# mm_token_type_ids: transformers 5 Qwen-VL processors return it and the models need it for M-RoPE
# image_sizes: Mistral-3's Pixtral tower takes each image's (height, width)
_MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids", "image_sizes")
_PROMPT_SENTINEL = "\u2063DLA-PROMPT\u2063"  # invisible separator; never in a real prompt


@dataclass
class LoadedMLLM:
    """A loaded vision-language model ready for :func:`encode_joint`.

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


# ----------------------------------------------------------------------------- loading


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


def _transformers_major() -> int:
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


# ----------------------------------------------------------------------------- inputs


def _normalise_prompts(prompts: str | Sequence[str]) -> list[str]:
    single = isinstance(prompts, str)
    items = [prompts] if single else list(prompts)
    if not items:
        raise DLAInputError("No prompt given. Write an instruction (e.g. 'the dog from the picture on a beach').")
    result = []
    for index, prompt in enumerate(items):
        if not isinstance(prompt, str):
            raise DLAInputError(f"Prompt {index + 1} is a {type(prompt).__name__}, not text.")
        if not prompt.strip():
            where = "The prompt" if single else f"Prompt {index + 1}"
            raise DLAInputError(
                f"{where} is empty. Write an instruction describing the image to make "
                "(e.g. 'the dog from the picture on a beach')."
            )
        result.append(prompt.strip())
    check_count("Prompts in one batch", len(result), max_batch(), BATCH_ENV, "Encode the prompts in smaller batches.")
    return result


def _is_image_like(item) -> bool:
    return isinstance(item, (Image.Image, torch.Tensor)) or type(item).__module__ == "numpy"


def _normalise_references(references, batch: int) -> list[list]:
    """One list of images per sample. A flat list (or one image) is shared by every sample."""
    if references is None or (isinstance(references, (list, tuple)) and len(references) == 0):
        raise DLAInputError("No reference image given. Connect at least one reference IMAGE.")
    if _is_image_like(references):
        return [[references]] * batch
    per_sample = all(isinstance(item, (list, tuple)) for item in references)
    if not per_sample:
        return [list(references)] * batch
    if len(references) != batch:
        raise DLAInputError(
            f"{len(references)} reference lists for {batch} prompts; give one list of references per prompt "
            "(or one flat list shared by all prompts)."
        )
    for index, refs in enumerate(references):
        if len(refs) == 0:
            raise DLAInputError(f"Prompt {index + 1} has no reference image. Give at least one per prompt.")
    return [list(refs) for refs in references]


def _check_reference_count(count: int, index: int, batch: int) -> None:
    where = "Reference images" if batch == 1 else f"Reference images of prompt {index + 1}"
    check_count(
        where,
        count,
        max_references(),
        REFERENCES_ENV,
        "Each reference adds hundreds of MLLM tokens; pick the few best views of the subject.",
    )


def _normalise_layers(layers: Sequence[int] | None, num_layers: int) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(num_layers))
    if isinstance(layers, int):
        layers = [layers]
    result = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise DLAInputError(f"Layer index {layer!r} is not an integer.")
        if not -num_layers <= layer < num_layers:
            raise DLAInputError(
                f"Layer index {layer} is out of range: this MLLM has {num_layers} hidden states "
                f"(0 = embeddings .. {num_layers - 1} = last layer; negative indices count from the end)."
            )
        result.append(layer % num_layers)
    if not result:
        raise DLAInputError("Empty layer selection; give at least one layer index (or none for all layers).")
    if len(set(result)) != len(result):
        raise DLAInputError(f"Layer selection {list(layers)} names a layer twice; list each layer once.")
    return tuple(result)


def _prepare_images(mllm: LoadedMLLM, images: list, image_size: int | None) -> tuple[list, dict]:
    """Apply the reference-resolution policy. Returns (images, extra processor image kwargs).

    InternVL: the reference is resized so its longer side is ``image_size``; the processor then
    cuts it into its tile size (448 px for InternVL3) by aspect ratio, with at most
    ``round(image_size / tile)**2`` tiles (+ one thumbnail when more than one tile); each tile
    gives ``image_seq_length`` tokens (256 for InternVL3). Qwen-VL: the processor resizes the
    reference to about ``image_size**2`` pixels (aspect kept, sides multiples of
    patch*merge = 28 for Qwen2.5-VL, 32 for Qwen3-VL); one token per 28x28 (32x32) block.
    Mistral-3 (Pixtral): the reference is resized so its longer side is ``image_size`` (the
    processor still caps it at its ``longest_edge``); one token per 28x28 block.
    ``None`` keeps the processor's own defaults.
    """
    if image_size is None:
        return images, {}
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or not (MIN_IMAGE_SIDE <= image_size <= MAX_IMAGE_SIZE)
    ):
        raise DLAInputError(
            f"Reference resolution {image_size!r} is invalid; use an integer number of pixels between "
            f"{MIN_IMAGE_SIDE} and {MAX_IMAGE_SIZE} (InternVL3 reads 448 px tiles, Qwen-VL any size)."
        )
    image_processor = mllm.processor.image_processor
    if mllm.family == "mistral3":
        # Pixtral keeps the aspect ratio, caps the longer side at its own longest_edge and cuts
        # 14 px patches (2 x 2 merged: one image token per 28 x 28 px, plus a break per row).
        return [resize_for_mllm(image, max_side=image_size) for image in images], {}
    if mllm.family == "internvl":
        tile = int(image_processor.size["height"])
        images = [resize_for_mllm(image, max_side=image_size) for image in images]
        return images, {"max_patches": max(1, round(image_size / tile)) ** 2}
    factor = int(image_processor.patch_size) * int(image_processor.merge_size)
    pixels = max(image_size * image_size, factor * factor)
    if _transformers_major() >= 5:
        # transformers 5 deprecates the min_pixels / max_pixels call kwargs for the same pixel bounds in size;
        # transformers 4.57's processor call does not pass a size on to the Qwen image processor.
        return images, {"size": {"shortest_edge": pixels, "longest_edge": pixels}}
    return images, {"min_pixels": pixels, "max_pixels": pixels}


def _messages(prompt: str, num_images: int) -> list[dict]:
    """One user turn: the references (tagged "Picture k: " when several), then the instruction."""
    content: list[dict] = []
    for index in range(num_images):
        if num_images > 1:
            content.append({"type": "text", "text": f"Picture {index + 1}: "})
        content.append({"type": "image"})
    content.append({"type": "text", "text": _PROMPT_SENTINEL})
    return [{"role": "user", "content": content}]


def _render(processor, prompt: str, num_images: int) -> tuple[str, tuple[int, int]]:
    """Render the chat template; return the text and the prompt's character span in it."""
    rendered = processor.apply_chat_template(_messages(prompt, num_images), tokenize=False, add_generation_prompt=True)
    parts = rendered.split(_PROMPT_SENTINEL)
    if len(parts) != 2:
        raise RuntimeError("the chat template did not place the instruction exactly once")
    prefix, suffix = parts
    return prefix + prompt + suffix, (len(prefix), len(prefix) + len(prompt))


def _check_prompt_tokens(processor, prompt: str, index: int) -> None:
    tokenizer = processor.tokenizer
    special = set(tokenizer.all_special_tokens) | set(getattr(tokenizer, "added_tokens_encoder", {}))
    found = sorted(token for token in special if token and token in prompt)
    if found:
        raise DLAInputError(
            f"Prompt {index + 1} contains the model's special token(s) {', '.join(found)}. Remove them: the "
            "references are inserted automatically."
        )
    check_prompt_tokens(len(tokenizer(prompt, add_special_tokens=False)["input_ids"]), f"Prompt {index + 1}")


def _text_token_mask(
    processor, text: str, span: tuple[int, int], input_ids: torch.Tensor, real_length: int
) -> torch.Tensor:
    """Mark the instruction's tokens in one processed sequence. [tokens] bool.

    The unexpanded text (one placeholder per image) is tokenised with offsets; the processor
    only expands image placeholders, which all precede the instruction, and special tokens
    split the text before pre-tokenisation, so the tokens from the instruction to the end
    are identical in both sequences and are matched by their distance from the end.
    """
    encoding = processor.tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    start, end = span
    in_prompt = [a < end and b > start and b > a for a, b in offsets]
    first = in_prompt.index(True)
    tail = len(ids) - first
    expanded_tail = input_ids[real_length - tail : real_length].tolist()
    if expanded_tail != ids[first:]:
        raise RuntimeError("instruction tokens differ between the processor's sequence and the plain tokenisation")
    mask = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    for j, flag in enumerate(in_prompt[first:]):
        mask[real_length - tail + j] = flag
    return mask


# ----------------------------------------------------------------------------- capture


class _StopForward(Exception):
    """Raised by a capture hook once the highest requested layer is stored."""


def _backbone_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList, nn.Module]:
    """(multimodal backbone without LM head, decoder layers, final norm)."""
    backbone = model.model
    language_model = backbone.language_model
    return backbone, language_model.layers, language_model.norm


Progress = Callable[[int, int], None]  # (steps done, steps in all); may raise to stop the work (an interrupt)


def forward_steps(mllm: LoadedMLLM, layer_indices: tuple[int, ...]) -> int:
    """Progress steps :func:`capture_forward` reports: one per decoder layer it runs (+1 for the final norm)."""
    num_decoders = mllm.spec.num_layers - 1
    last_needed = max(layer_indices)
    return min(last_needed, num_decoders - 1) + 1 + (1 if last_needed == num_decoders else 0)


def capture_forward(
    mllm: LoadedMLLM,
    inputs: dict,
    layer_indices: tuple[int, ...],
    progress: Progress | None = None,
    done_before: int = 0,
    total: int | None = None,
) -> torch.Tensor:
    """Run the backbone once; return the requested layers. [batch, kept layers, tokens, width].

    ``progress(done, total)`` is called as each decoder layer starts (and after the final norm), with
    ``done`` counted from ``done_before``; an exception it raises (ComfyUI's interrupt) stops the forward
    there and propagates.
    """
    backbone, decoder_layers, final_norm = _backbone_parts(mllm.model)
    num_decoders = len(decoder_layers)
    input_ids = inputs["input_ids"]
    device = input_ids.device
    dtype = backbone.get_input_embeddings().weight.dtype
    batch, tokens = input_ids.shape
    captured = torch.empty(batch, len(layer_indices), tokens, mllm.spec.width, dtype=dtype, device=device)
    slots = {layer: slot for slot, layer in enumerate(layer_indices)}
    last_needed = max(layer_indices)
    steps_total = total if total is not None else done_before + forward_steps(mllm, layer_indices)
    step = [done_before]

    def report() -> None:
        step[0] += 1
        if progress is not None:
            progress(step[0], steps_total)

    def store(layer: int, hidden: torch.Tensor) -> None:
        if layer in slots:
            captured[:, slots[layer]].copy_(hidden)
        if layer == last_needed and last_needed < num_decoders:
            raise _StopForward

    def make_input_hook(layer: int):
        def hook(module, args, kwargs):
            report()
            store(layer, args[0] if args else kwargs["hidden_states"])

        return hook

    def final_norm_hook(module, args, output):
        report()
        store(num_decoders, output)

    # Layer k < N is the input of decoder layer k: the previous decoder's output plus whatever
    # the model adds between layers (Qwen3-VL's deepstack features), as transformers records it.
    handles = [
        decoder_layers[layer].register_forward_pre_hook(make_input_hook(layer), with_kwargs=True)
        for layer in range(min(last_needed, num_decoders - 1) + 1)
    ]
    if last_needed == num_decoders:
        handles.append(final_norm.register_forward_hook(final_norm_hook))
    try:
        with torch.inference_mode():
            mllm.forward_calls += 1
            backbone(**inputs, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


def encode_joint(
    mllm: LoadedMLLM,
    prompts: str | Sequence[str],
    references,
    image_size: int | None = None,
    layers: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> MLLMFeatures:
    """Encode instruction(s) jointly with their reference image(s); capture every layer.

    ``prompts``: one instruction or a list of B. Leading/trailing whitespace is stripped.
    ``references``: for one prompt, an image or a list of images (PIL, IMAGE tensors
    ``[batch, height, width, 3]`` whose batch items each count as one reference); for B
    prompts, a list of B such lists, or one flat list shared by all prompts. Several
    references are tagged "Picture 1: ", "Picture 2: " ... before each image.
    ``image_size``: MLLM-side reference resolution in px (see :func:`_prepare_images`;
    Mistral-3: the longer side, like InternVL);
    ``None`` = the processor's defaults. ``layers``: indices of the hidden states to keep, in
    that order (negative count from the end); ``None`` = all. The forward stops after the
    highest kept layer. ``progress(done, total)``: called once per reference image prepared and once per
    decoder layer run (see :func:`capture_forward`); whatever it raises stops the encode (ComfyUI's interrupt).

    Limits (:mod:`dla_core.checks`, each raised by an environment variable): prompt length in tokens
    (``DLA_MAX_PROMPT_TOKENS``, 1024), references per prompt (``DLA_MAX_REFERENCES``, 16), prompts per batch
    (``DLA_MAX_BATCH``, 16).

    Returns :class:`MLLMFeatures` right-padded along tokens, on the model's device, in its
    dtype. ``text_mask`` marks the instruction's own tokens, ``image_mask`` the image
    placeholder tokens; chat-template tokens (system prompt, role markers, image delimiters,
    "Picture k:" tags, generation prompt) are in neither. Each sample's result equals the
    one of encoding it alone.
    """
    prompt_list = _normalise_prompts(prompts)
    reference_lists = _normalise_references(references, len(prompt_list))
    layer_indices = _normalise_layers(layers, mllm.spec.num_layers)
    processor = mllm.processor
    texts, spans, images, counts, image_kwargs = [], [], [], [], {}
    checked = []
    for index, (prompt, refs) in enumerate(zip(prompt_list, reference_lists)):
        _check_prompt_tokens(processor, prompt, index)
        name = "reference image" if len(prompt_list) == 1 else f"reference image of prompt {index + 1}"
        pils = to_pil_list(refs, name=name)
        _check_reference_count(len(pils), index, len(prompt_list))
        checked.append(pils)
    total = sum(len(pils) for pils in checked) + forward_steps(mllm, layer_indices)
    for prompt, pils in zip(prompt_list, checked):
        prepared = []
        for image in pils:
            image_list, image_kwargs = _prepare_images(mllm, [image], image_size)
            prepared.extend(image_list)
            if progress is not None:
                progress(len(images) + len(prepared), total)
        pils = prepared
        text, span = _render(processor, prompt, len(pils))
        texts.append(text)
        spans.append(span)
        images.extend(pils)
        counts.append(len(pils))

    device = mllm.device
    encoded = processor(
        text=texts, images=images, padding=True, padding_side="right", return_tensors="pt", **image_kwargs
    )
    input_ids = encoded["input_ids"]  # [batch, tokens]
    attention_mask = encoded["attention_mask"].bool()  # [batch, tokens]
    real_lengths = attention_mask.sum(dim=1).tolist()
    image_token_id = mllm.model.config.image_token_id
    image_mask = (input_ids == image_token_id) & attention_mask
    text_mask = torch.stack(
        [_text_token_mask(processor, texts[i], spans[i], input_ids[i], real_lengths[i]) for i in range(len(texts))]
    )

    # The models cast pixel_values to their vision tower's dtype themselves.
    inputs = {key: encoded[key].to(device) for key in _MODEL_INPUTS if key in encoded}
    hidden_states = capture_forward(
        mllm, inputs, layer_indices, progress, done_before=len(images), total=total
    )  # [batch, kept layers, tokens, width]
    return MLLMFeatures(
        hidden_states=hidden_states,
        image_mask=image_mask.to(device),
        text_mask=text_mask.to(device),
        attention_mask=attention_mask.to(device),
        family=mllm.family,
        num_layers=mllm.spec.num_layers,
        width=mllm.spec.width,
        layer_indices=layer_indices,
        prompts=tuple(prompt_list),
        model_name=mllm.name,
        extra={
            "image_token_counts": image_mask.sum(dim=1).tolist(),
            "references_per_prompt": counts,
            "image_size": image_size,
        },
    )
