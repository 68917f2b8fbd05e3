"""Reference latents for edit models (Qwen-Image-Edit, FLUX Kontext): any number, a VAE resolution each.

``DLAReferenceLatents`` VAE-encodes every reference at its own resolution (native
Qwen-Image-Edit: about 1024x1024 of area, sides rounded to 8 pixels) and appends the latents
to a conditioning under ComfyUI's ``reference_latents`` key with the placement method the
model expects, so the same conditioning works with ComfyUI's samplers and with the staged
ones (where stage 1 simply uses the conditioning without this node).
"""

from __future__ import annotations

import logging

import node_helpers
from comfy_api.latest import io

from ..dla_core.errors import DLAInputError
from ..dla_core.flux.references import REFERENCE_METHODS as FLUX_REFERENCE_METHODS
from ..dla_core.images import reference_frames
from ..dla_core.qwen_template import (
    MODEL_REFERENCE_METHODS,
    NATIVE_VAE_SIDE,
    REFERENCE_LATENTS_METHODS,
    VAE_SIZE_MULTIPLE,
    parse_resolution_list,
    resolve_reference_method,
    scaled_size,
)
from .input_checks import checked_inputs
from .qwen_clip import CATEGORY, MAX_REFERENCE_INPUTS, resize_area

MODEL_OWN_METHOD = "model's own method (leave unset)"
# Model choices ("qwen_image_edit_2509 (index)", ...) -> model; names from dla_core.qwen_template.
_MODEL_OF_CHOICE = {f"{model} ({method})": model for model, method in MODEL_REFERENCE_METHODS.items()}
# The node's options (saved graphs hold these strings): the model's own method, each model's method, every method.
METHOD_CHOICES = (
    MODEL_OWN_METHOD,
    *_MODEL_OF_CHOICE,
    *REFERENCE_LATENTS_METHODS,
    "leave unset",  # the same as MODEL_OWN_METHOD; kept so graphs saved with it still load
)
UNSET_CHOICES = (MODEL_OWN_METHOD, "leave unset")
BASE_METHODS = FLUX_REFERENCE_METHODS  # every ComfyUI version knows FLUX's three placements


def available_reference_methods() -> tuple[str, ...]:
    """``reference_latents_method`` values the running ComfyUI knows.

    Read from the options of ComfyUI's own ``FluxKontextMultiReferenceLatentMethod`` node, which
    lists every method the model code implements (newer ComfyUI adds ``index_timestep_zero``).
    """
    import nodes as comfy_nodes  # ComfyUI's top-level nodes module

    node = comfy_nodes.NODE_CLASS_MAPPINGS.get("FluxKontextMultiReferenceLatentMethod")
    try:
        options = node.define_schema().inputs[1].options  # type: ignore[union-attr]
        methods = tuple("uxo" if "uxo" in o else o for o in options)
    except Exception:  # noqa: BLE001 (older/newer ComfyUI: fall back to the methods every version has)
        methods = BASE_METHODS
    return methods or BASE_METHODS


def choose_method(choice: str) -> tuple[str | None, str]:
    """The method to set for a ``reference_latents_method`` choice, and a note when it was degraded.

    ``None`` for the model's own method: nothing is written, so the model uses the method its
    checkpoint declares (newer ComfyUI reads e.g. ``index_timestep_zero`` from Qwen-Image-Edit-2511's
    weights; writing ``index`` would override it).
    """
    if choice in UNSET_CHOICES:
        return None, ""
    if choice not in METHOD_CHOICES:
        raise DLAInputError(
            f"reference_latents_method '{choice}' is not one of this node's options ({', '.join(METHOD_CHOICES)})."
        )
    model = _MODEL_OF_CHOICE.get(choice, choice)
    requested = "auto" if choice in _MODEL_OF_CHOICE else choice
    return resolve_reference_method(requested, model, available_reference_methods())


def encode_reference_latents(vae, images: list, vae_resolution: int, vae_resolutions: str = "") -> list:
    """VAE latents of every reference frame, each scaled to about its own side\u00b2 pixels (sides multiple of 8)."""
    refs = reference_frames(images)
    if not refs:
        raise DLAInputError("Connect at least one reference image to encode.")
    sides = parse_resolution_list(vae_resolutions, len(refs), vae_resolution, "vae_resolutions")
    latents = []
    for ref, side in zip(refs, sides):
        width, height = scaled_size(ref.shape[2], ref.shape[1], side, VAE_SIZE_MULTIPLE)
        latents.append(vae.encode(resize_area(ref, width, height)))
    return latents


class DLAReferenceLatents(io.ComfyNode):
    """Append VAE reference latents (any number, per-reference resolution) to a conditioning."""

    @classmethod
    def define_schema(cls):
        image_inputs = [
            io.Image.Input(
                f"image{i}",
                optional=True,
                tooltip=f"Reference image(s) {i}; every frame of a batch is its own reference, in the same order as in "
                "the joint encode.",
            )
            for i in range(1, MAX_REFERENCE_INPUTS + 1)
        ]
        return io.Schema(
            node_id="DLAReferenceLatents",
            display_name="Reference Latents (DLA)",
            category=CATEGORY,
            description=(
                "VAE-encodes any number of references, each at its own resolution, and appends them to the "
                "conditioning "
                "as reference latents (identity for Qwen-Image-Edit and FLUX Kontext). Feed the conditioning without "
                "this node to stage 1 of the advanced staged sampler and the one with it to stages 2 and 3."
            ),
            inputs=[
                io.Conditioning.Input(
                    "conditioning",
                    tooltip="Conditioning to add the reference latents to (e.g. from Qwen2.5-VL Joint Encode or "
                    "CLIPTextEncode).",
                ),
                io.Vae.Input(
                    "vae",
                    tooltip="The model's VAE (qwen_image_vae.safetensors for Qwen-Image-Edit, ae.safetensors for FLUX "
                    "Kontext).",
                ),
                io.Int.Input(
                    "vae_resolution",
                    default=NATIVE_VAE_SIDE,
                    min=64,
                    max=4096,
                    step=8,
                    tooltip="Each reference is scaled (aspect kept, sides rounded to 8) to about this side squared in "
                    "pixels "
                    "before VAE encoding. 1024 matches the native Qwen-Image-Edit node; smaller is cheaper, larger "
                    "keeps more detail.",
                ),
                io.Combo.Input(
                    "reference_latents_method",
                    options=list(METHOD_CHOICES),
                    default=METHOD_CHOICES[0],
                    tooltip="How the DiT places the references. Default: the model's own method (nothing is written; "
                    "newer ComfyUI reads it from the checkpoint, e.g. index_timestep_zero for Qwen-Image-Edit-2511). "
                    "Override: Qwen-Image-Edit-2509: index; 2511: index_timestep_zero (falls back to index, with a "
                    "warning, on a ComfyUI that lacks it); FLUX Kontext: offset.",
                ),
                io.String.Input(
                    "vae_resolutions",
                    default="",
                    optional=True,
                    tooltip="Optional per-reference override: sides in pixels separated by commas, in reference order, "
                    "e.g. '1024, 512'.",
                ),
                *image_inputs,
            ],
            outputs=[io.Conditioning.Output(tooltip="The conditioning with the reference latents appended.")],
        )

    validate_inputs = checked_inputs()

    @classmethod
    def execute(
        cls,
        conditioning,
        vae,
        vae_resolution=NATIVE_VAE_SIDE,
        reference_latents_method=METHOD_CHOICES[0],
        vae_resolutions="",
        **images,
    ) -> io.NodeOutput:
        ordered = [images.get(f"image{i}") for i in range(1, MAX_REFERENCE_INPUTS + 1)]
        method, note = choose_method(reference_latents_method)
        if note:
            logging.warning("DLA Reference Latents: %s", note)
        latents = encode_reference_latents(vae, ordered, vae_resolution, vae_resolutions)
        out = node_helpers.conditioning_set_values(conditioning, {"reference_latents": latents}, append=True)
        if method is not None:
            out = node_helpers.conditioning_set_values(out, {"reference_latents_method": method})
        return io.NodeOutput(out)
