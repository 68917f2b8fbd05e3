"""The joint encode: instruction(s) and reference image(s) in one chat sequence -> :class:`MLLMFeatures`.

Normalises the inputs (:mod:`.inputs`), builds the model's own processor inputs from its chat
template, runs one backbone forward (:mod:`.capture`) and marks the instruction and image tokens.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..features import MLLMFeatures
from ..images import to_pil_list
from .capture import Progress, capture_forward, forward_steps
from .inputs import (
    check_prompt,
    check_reference_count,
    normalise_layers,
    normalise_prompts,
    normalise_references,
    prepare_images,
    render_chat,
    text_token_mask,
)
from .loading import LoadedMLLM

# mm_token_type_ids: transformers 5 Qwen-VL processors return it and the models need it for M-RoPE
# image_sizes: Mistral-3's Pixtral tower takes each image's (height, width)
_MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids", "image_sizes")


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
    ``image_size``: MLLM-side reference resolution in px (see :func:`prepare_images`;
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
    prompt_list = normalise_prompts(prompts)
    reference_lists = normalise_references(references, len(prompt_list))
    layer_indices = normalise_layers(layers, mllm.spec.num_layers)
    processor = mllm.processor
    texts, spans, images, counts, image_kwargs = [], [], [], [], {}
    checked = []
    for index, (prompt, refs) in enumerate(zip(prompt_list, reference_lists)):
        check_prompt(processor, prompt, index)
        name = "reference image" if len(prompt_list) == 1 else f"reference image of prompt {index + 1}"
        pils = to_pil_list(refs, name=name)
        check_reference_count(len(pils), index, len(prompt_list))
        checked.append(pils)
    total = sum(len(pils) for pils in checked) + forward_steps(mllm, layer_indices)
    for prompt, pils in zip(prompt_list, checked):
        prepared = []
        for image in pils:
            image_list, image_kwargs = prepare_images(mllm, [image], image_size)
            prepared.extend(image_list)
            if progress is not None:
                progress(len(images) + len(prepared), total)
        pils = prepared
        text, span = render_chat(processor, prompt, len(pils))
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
        [text_token_mask(processor, texts[i], spans[i], input_ids[i], real_lengths[i]) for i in range(len(texts))]
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
