"""ComfyUI's own FLUX.2 text encoders (Mistral-Small-3 for [dev], Qwen3 for [klein]) as the DLA's MLLM.

``DLAFlux2TextEncode`` runs the CLIP that ``CLIPLoader`` (type ``flux2``) loaded once, through
ComfyUI's public ``clip.tokenize`` / ``clip.encode_from_tokens_scheduled``, and returns both

* ``CONDITIONING``: exactly what ``CLIPTextEncode`` gives for the same prompt, and
* ``MLLM_FEATURES``: the hidden states of *every* layer of that same forward, for the DLA.

Layer numbering (the pack's, and ComfyUI's ``layer=[10, 20, 30]`` for these encoders; checked in
ComfyUI 0.33's ``Llama2_.forward``, which records ``x`` *before* decoder layer ``i`` when ``i`` is
listed): layer 0 is the token embeddings, layer k (1 <= k < n) the input of decoder layer k =
the output of decoder layer k-1, layer n the output after the last decoder layer, through the
final norm when the encoder has one. This is Hugging Face's ``hidden_states`` index. So FLUX.2
[dev]'s conditioning token is ``[layer 10 | layer 20 | layer 30]`` of these features and
[klein]'s ``[layer 9 | layer 18 | layer 27]``. ComfyUI's pruned FLUX.2 file (30 decoder layers,
no final norm) gives hidden states 0..30 of the 24B model's 41; the features say so
(``num_layers`` 41, ``layer_indices`` 0..30), so a DLA made for the full encoder accepts them
as long as it reads only layers up to 30, as FLUX.2 itself does.

The features hold every token ComfyUI hands to the DiT (template and padding tokens included,
as the native conditioning does): ``text_mask`` is all true and there are no image tokens
(ComfyUI's FLUX.2 text encoders have no vision path; for a reference image read jointly with
the text use the Hugging Face Mistral-3 through ``DLAMLLMLoader``).
"""

from __future__ import annotations

import contextlib
import logging

import torch
from comfy_api.latest import io

from ..dla_core.dla import TARGETS
from ..dla_core.errors import DLAInputError
from ..dla_core.features import MLLMFeatures
from .compat import flux2_missing_message
from .input_checks import checked_inputs
from .progress import check_interrupt, interrupt_between
from .qwen_clip import check_clip_prompt, snapshot
from .types import CATEGORY as ROOT_CATEGORY
from .types import MLLM_FEATURES

CATEGORY = ROOT_CATEGORY + "/FLUX.2"
# ComfyUI's encoder name -> (MLLMFeatures.family, hidden states of the full model, target)
ENCODERS = {
    "mistral3_24b": ("mistral3", TARGETS["flux2"].native.num_layers, "flux2"),
    "qwen3_4b": ("qwen3", TARGETS["flux2_klein"].native.num_layers, "flux2_klein"),
    "qwen3_8b": ("qwen3", TARGETS["flux2_klein_9b"].native.num_layers, "flux2_klein_9b"),
}
LOAD_HINT = (
    "Load FLUX.2's text encoder with a 'Load CLIP' (CLIPLoader) node set to type 'flux2' (FLUX.2 [dev]: "
    "mistral_3_small_flux2_*.safetensors; FLUX.2 [klein]: qwen_3_4b / qwen_3_8b)."
)


# ----------------------------------------------------------------------------------------
# The ONE place that touches ComfyUI's FLUX.2 text-encoder internals.
# tests/integration/test_flux2_clip.py::test_comfy_internals_the_flux2_capture_reads_are_where_expected
# pins every attribute used here, so a ComfyUI refactor fails that test loudly.
# ----------------------------------------------------------------------------------------
def comfy_flux2_modules(clip) -> dict:
    """Locate the parts of ComfyUI's FLUX.2 text encoder that the layer capture hooks.

    Returns ``{"name", "family", "num_layers", "target", "model", "layers", "has_norm",
    "native_layers"}``: ComfyUI's encoder name (``mistral3_24b``, ``qwen3_4b``, ``qwen3_8b``),
    the pack's family and full hidden-state count, the target it conditions, the language
    model (``Llama2_``: called once per forward, returns ``(x, intermediate)``), its decoder
    layers, whether it has a final norm, and the layers ComfyUI stacks (``layer=[...]``).
    Raises :class:`DLAInputError` with the fix on a ComfyUI without FLUX.2 or another CLIP.
    """
    import comfy.text_encoders.flux as comfy_flux  # noqa: PLC0415 (ComfyUI only)

    flux2_te_class = getattr(comfy_flux, "Flux2TEModel", None)
    if flux2_te_class is None:
        raise DLAInputError(flux2_missing_message())
    cond_model = getattr(clip, "cond_stage_model", None)
    if cond_model is None or not hasattr(clip, "tokenize"):
        raise DLAInputError(f"The 'clip' input is not a ComfyUI CLIP (got {type(clip).__name__}). {LOAD_HINT}")
    name = getattr(cond_model, "clip_name", None)
    if not isinstance(cond_model, flux2_te_class) or name not in ENCODERS:
        raise DLAInputError(
            f"This CLIP is a {type(cond_model).__name__} ({name or 'no FLUX.2 encoder'}), not one of FLUX.2's text "
            f"encoders. {LOAD_HINT}"
        )
    encoder = getattr(cond_model, getattr(cond_model, "clip", ""), None)
    model = getattr(getattr(encoder, "transformer", None), "model", None)
    layers = getattr(model, "layers", None)
    native_layers = getattr(encoder, "layer", None)
    if layers is None or len(layers) == 0 or not hasattr(model, "norm") or not isinstance(native_layers, list):
        raise DLAInputError(
            "This ComfyUI's FLUX.2 text encoder no longer has the structure this pack reads "
            f"(cond_stage_model.clip_{name}.transformer.model.layers / .norm, .layer). Update the DLA pack."
        )
    family, num_layers, target = ENCODERS[name]
    return {
        "name": name,
        "family": family,
        "num_layers": num_layers,
        "target": target,
        "model": model,
        "layers": layers,
        "has_norm": model.norm is not None,
        "native_layers": list(native_layers),
    }


@contextlib.contextmanager
def capture_hidden_states(modules: dict):
    """Record every hidden state of each forward of the language model inside the block.

    Yields a list; each forward appends ``[sequences, decoder layers + 1, tokens, width]``
    (float32 copies, taken when each state exists: newer ComfyUI's layers overwrite their
    input in place): the input of every decoder layer, then the model's output (after the
    final norm if there is one).
    """
    records: list[torch.Tensor] = []
    states: list[torch.Tensor] = []

    def on_model_start(_module, _args):
        states.clear()

    def on_layer_input(_module, args, kwargs):
        states.append(snapshot(kwargs["x"] if "x" in kwargs else args[0]))

    def on_model_end(_module, _args, output):
        if len(states) == len(modules["layers"]):
            records.append(torch.stack(states + [snapshot(output)], dim=1))
        states.clear()

    handles = [modules["model"].register_forward_pre_hook(on_model_start)]
    handles.extend(layer.register_forward_pre_hook(on_layer_input, with_kwargs=True) for layer in modules["layers"])
    handles.append(modules["model"].register_forward_hook(on_model_end))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def encode_flux2_layers(clip, prompt: str) -> tuple[list, MLLMFeatures]:
    """One forward of ComfyUI's FLUX.2 text encoder -> (native conditioning, every layer's hidden states)."""
    modules = comfy_flux2_modules(clip)
    check_clip_prompt(clip, prompt)  # DLA_MAX_PROMPT_TOKENS (the prompt's own tokens, not the padding to 512)
    tokens = clip.tokenize(prompt)
    check_interrupt()
    with capture_hidden_states(modules) as records, interrupt_between(modules["layers"]):  # Cancel: next layer
        conditioning = clip.encode_from_tokens_scheduled(tokens)
    if len(records) != 1:
        raise DLAInputError(
            f"ComfyUI's FLUX.2 text encoder ran {len(records)} forward passes for one prompt (expected 1). CLIP hooks "
            "with keyframes encode once per keyframe: remove them from this CLIP; otherwise update the DLA pack."
        )
    hidden = records[0]  # [sequences, states, tokens, width]; ComfyUI joins sequences along tokens
    sequences, held, length, width = hidden.shape
    hidden = hidden.transpose(0, 1).reshape(1, held, sequences * length, width)  # [1, states, tokens, width]
    kept = conditioning[0][0].shape[1]
    if hidden.shape[2] != kept:
        raise DLAInputError(
            f"ComfyUI's FLUX.2 conditioning has {kept} tokens but its encoder ran on {hidden.shape[2]}; update the DLA "
            "pack."
        )
    # The pruned FLUX.2 file (no final norm) is the first decoder layers of the full model: its
    # states 0..n are the full model's. A full model's last state is post-norm, so it is its own.
    num_layers = held if modules["has_norm"] else max(modules["num_layers"], held)
    everything = torch.ones(1, kept, dtype=torch.bool)
    features = MLLMFeatures(
        hidden_states=hidden,
        image_mask=torch.zeros_like(everything),
        text_mask=everything,  # every token the DiT reads, template and padding included (as natively)
        attention_mask=everything,
        family=modules["family"],
        num_layers=num_layers,
        width=width,
        layer_indices=tuple(range(held)),
        prompts=(prompt,),
        model_name=f"ComfyUI CLIP flux2 ({modules['name']})",
        extra={
            "source": "comfy_clip_flux2",
            "encoder": modules["name"],
            "target": modules["target"],
            "native_layers": modules["native_layers"],
            "final_norm": modules["has_norm"],
        },
    )
    logging.info(
        "DLA: FLUX.2 text encode (%s): %d tokens, %d hidden states",
        modules["name"],
        kept,
        features.hidden_states.shape[1],
    )
    return conditioning, features


class DLAFlux2TextEncode(io.ComfyNode):
    """FLUX.2's native text encoding plus every layer's hidden states for the DLA, from one forward."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DLAFlux2TextEncode",
            display_name="FLUX.2 Text Encode + All Layers (DLA)",
            category=CATEGORY,
            description=(
                "Encodes the prompt with ComfyUI's own FLUX.2 text encoder (Load CLIP, type flux2: Mistral-Small-3 "
                "for FLUX.2 [dev], Qwen3 for [klein]) and outputs the native conditioning (equal to CLIP Text Encode) "
                "and the hidden states of every layer of the same forward for the Dual Layer Aggregation. An untrained "
                "DLA made with `init-dla --target flux2 --init identity` (flux2_klein for [klein]) turns them back "
                "into the native conditioning exactly."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="FLUX.2's text encoder from 'Load CLIP' with type 'flux2'."),
                io.String.Input("prompt", multiline=True, dynamic_prompts=True, tooltip="The prompt."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="conditioning", tooltip="Native FLUX.2 conditioning."),
                MLLM_FEATURES.Output(
                    display_name="mllm_features",
                    tooltip="Hidden states of every layer of FLUX.2's text encoder, for Dual Layer Aggregation.",
                ),
            ],
        )

    validate_inputs = checked_inputs()

    @classmethod
    def execute(cls, clip, prompt) -> io.NodeOutput:
        conditioning, features = encode_flux2_layers(clip, prompt)
        return io.NodeOutput(conditioning, features)
