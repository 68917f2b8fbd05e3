"""Does a conditioning fit a diffusion model? One clear error before sampling instead of a matmul shape error.

A DLA makes conditioning for one target DiT (``dla_core.dla.TARGETS``): FLUX.1 reads 4096-wide
text tokens, FLUX.2 [dev] 15360, [klein] 7680 / 12288, Qwen-Image 3584. Sampling a model with
tokens of another width fails deep inside ComfyUI with "mat1 and mat2 shapes cannot be
multiplied (... x 15360 and 4096 x ...)"; :func:`check_conditioning_fits_model` says instead which
target the tokens are for, which the model reads and what to load. ``DLAAggregate`` runs it when
its optional ``model`` input is connected; samplers can call it on their conditioning.
"""

from __future__ import annotations

from ..dla_core.dla import TARGETS
from ..dla_core.errors import DLAInputError


# ----------------------------------------------------------------------------------------
# ComfyUI internals read here: MODEL (ModelPatcher) .model (BaseModel) .diffusion_model .txt_in
# (the Linear that takes the text tokens, in FLUX.1, FLUX.2 and Qwen-Image). Pinned by
# tests/integration/test_flux2_clip.py::test_model_context_width_reads_comfyuis_text_input_layer.
# ----------------------------------------------------------------------------------------
def model_context_width(model) -> int | None:
    """Width of the text tokens ``model`` (a ComfyUI MODEL) reads, or None when this model has no ``txt_in``.

    Krea 2 has no ``txt_in``: its DiT (``comfy.ldm.krea2``) unpacks ``txtlayers`` states of ``txtdim`` per
    token (12 x 2560), read from the model's own attributes (pinned by
    tests/integration/test_krea2_staging.py::test_the_model_fit_check_reads_krea2s_text_width).
    """
    diffusion_model = getattr(getattr(model, "model", None), "diffusion_model", None)
    width = getattr(getattr(diffusion_model, "txt_in", None), "in_features", None)
    if width is None and hasattr(diffusion_model, "txtfusion"):
        layers, layer_width = getattr(diffusion_model, "txtlayers", None), getattr(diffusion_model, "txtdim", None)
        width = layers * layer_width if isinstance(layers, int) and isinstance(layer_width, int) else None
    return width if isinstance(width, int) else None


def _targets_of_width(width: int) -> str:
    names = sorted(name for name, spec in TARGETS.items() if spec.context_width == width)
    return ", ".join(f"'{name}' ({TARGETS[name].description})" for name in names) or "no DLA target"


def check_conditioning_fits_model(model, conditioning, source: str = "The conditioning") -> None:
    """Raise :class:`DLAInputError` when the tokens of ``conditioning`` are not as wide as ``model`` reads."""
    expected = model_context_width(model)
    if expected is None:
        return
    for tokens, _values in conditioning:
        width = int(tokens.shape[-1])
        if width != expected:
            raise DLAInputError(
                f"{source} has {width}-wide text tokens (for target {_targets_of_width(width)}), but this model "
                f"reads {expected}-wide ones (target {_targets_of_width(expected)}). Use the DLA made for this "
                "model (`python -m dla_core init-dla --target <its target>` for an untrained one), or load the "
                "model the DLA is for."
            )


def check_dla_fits_model(config, model) -> None:
    """Raise :class:`DLAInputError` when a DLA (given its ``DLAConfig``) is for another model than ``model``."""
    expected = model_context_width(model)
    if expected is None or expected == config.context_width:
        return
    raise DLAInputError(
        f"This DLA is for target '{config.target}' ({TARGETS[config.target].description}): its tokens are "
        f"{config.context_width} wide, but the connected model reads {expected}-wide tokens (target "
        f"{_targets_of_width(expected)}). Use the DLA made for this model (`python -m dla_core init-dla --target "
        "<its target>` for an untrained one), or connect the model the DLA is for."
    )
