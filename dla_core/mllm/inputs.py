"""Input normalisation for the joint encode: prompts, references, layer selection, image sizes, chat template.

Everything here runs before the model does: each problem with the inputs raises :class:`DLAInputError`
saying how to fix it, and the limits of :mod:`dla_core.checks` apply (prompt tokens, references per
prompt, prompts per batch).
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from ..checks import (
    BATCH_ENV,
    REFERENCES_ENV,
    check_count,
    check_prompt_tokens,
    max_batch,
    max_references,
)
from ..errors import DLAInputError
from ..images import MIN_IMAGE_SIDE, resize_for_mllm
from .loading import LoadedMLLM, transformers_major

MAX_IMAGE_SIZE = 4096  # px; an MLLM-side reference resolution beyond this is surely a typo
_PROMPT_SENTINEL = "\u2063DLA-PROMPT\u2063"  # invisible separator; never in a real prompt


def normalise_prompts(prompts: str | Sequence[str]) -> list[str]:
    """One instruction or a list of them -> a non-empty list of stripped, non-empty texts within the batch limit."""
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


def normalise_references(references, batch: int) -> list[list]:
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


def check_reference_count(count: int, index: int, batch: int) -> None:
    """Prompt ``index`` of ``batch`` has at most ``DLA_MAX_REFERENCES`` reference images."""
    where = "Reference images" if batch == 1 else f"Reference images of prompt {index + 1}"
    check_count(
        where,
        count,
        max_references(),
        REFERENCES_ENV,
        "Each reference adds hundreds of MLLM tokens; pick the few best views of the subject.",
    )


def normalise_layers(layers: Sequence[int] | None, num_layers: int) -> tuple[int, ...]:
    """Layer indices to keep (``None``: all; negative count from the end) -> distinct indices in ``0..num_layers-1``."""
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


def prepare_images(mllm: LoadedMLLM, images: list, image_size: int | None) -> tuple[list, dict]:
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
    if transformers_major() >= 5:
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


def render_chat(processor, prompt: str, num_images: int) -> tuple[str, tuple[int, int]]:
    """Render the chat template; return the text and the prompt's character span in it."""
    rendered = processor.apply_chat_template(_messages(prompt, num_images), tokenize=False, add_generation_prompt=True)
    parts = rendered.split(_PROMPT_SENTINEL)
    if len(parts) != 2:
        raise RuntimeError("the chat template did not place the instruction exactly once")
    prefix, suffix = parts
    return prefix + prompt + suffix, (len(prefix), len(prefix) + len(prompt))


def check_prompt(processor, prompt: str, index: int) -> None:
    """Prompt ``index`` holds none of the model's special tokens and is within ``DLA_MAX_PROMPT_TOKENS``."""
    tokenizer = processor.tokenizer
    special = set(tokenizer.all_special_tokens) | set(getattr(tokenizer, "added_tokens_encoder", {}))
    found = sorted(token for token in special if token and token in prompt)
    if found:
        raise DLAInputError(
            f"Prompt {index + 1} contains the model's special token(s) {', '.join(found)}. Remove them: the "
            "references are inserted automatically."
        )
    check_prompt_tokens(len(tokenizer(prompt, add_special_tokens=False)["input_ids"]), f"Prompt {index + 1}")


def text_token_mask(
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
