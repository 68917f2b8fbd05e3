"""``reference_strength`` in ComfyUI: an attention patch that weighs each in-context reference per model call.

The math and the syntax live in :mod:`dla_core.schedule.strength`; this module is the ComfyUI side:

* :class:`ReferenceStrengthPatch`, ComfyUI's own patch point ``set_model_attn1_patch``: every
  joint-attention layer of FLUX (FLUX.1 Kontext, FLUX.2) and Krea 2 hands q/k/v and its mask to the
  patch and attends with the mask the patch returns. The patch adds ``log(s)`` on each reference's keys
  (their token counts come from the model itself, ``transformer_options["reference_image_num_tokens"]``).
  It is installed on a ``model.clone()``, after every patch the model already had, so ComfyUI's
  ``FluxKVCache`` (also an attn1 patch, which appends the cached reference keys) runs first and the bias
  applies to the keys the attention really sees, cached or not.
* :class:`ReferenceStrengths`, what the staged guider holds: it installs the patch, checks the count
  against the conditioning, and puts the strengths of one model call into that call's
  ``transformer_options`` (:data:`STRENGTHS_KEY`); a call whose strengths are all 1 leaves the attention
  untouched, bit for bit.

Where the model's attention ignores the patch (ComfyUI 0.3.64's FLUX blocks run no attention patches;
0.33.0's Qwen-Image builds its mask before the patches run) a strength other than 1 is refused with
the ComfyUI/model it needs, never silently dropped.
"""

from __future__ import annotations

from typing import Sequence

from comfy_api.latest import io

from ..dla_core.errors import DLAInputError
from ..dla_core.schedule.strength import (
    RAMP_EXAMPLE,
    STRENGTH_EXAMPLE,
    ReferenceStrength,
    add_key_bias,
    check_strength_count,
    is_neutral,
    parse_reference_strength,
    reference_key_bias,
    strengths_at,
)

# transformer_options key: the strengths of the references present in one model call, in order.
STRENGTHS_KEY = "dla_reference_strengths"

# diffusion-model modules whose joint attention takes the mask an attn1 patch returns (ComfyUI 0.33.0)
SUPPORTED_MODULES = {
    "comfy.ldm.flux.model": "FLUX.1 Kontext / FLUX.2",
    "comfy.ldm.krea2.model": "Krea 2",
}
QWEN_IMAGE_MODULE = "comfy.ldm.qwen_image.model"

FAMILIES_TEXT = "FLUX.1 Kontext, FLUX.2 [dev]/[klein] and Krea 2"

QWEN_MESSAGE = (
    "reference_strength cannot weigh Qwen-Image-Edit's references in this ComfyUI: its Qwen-Image attention builds "
    "the mask before attention patches run, so the mask an attn1 patch returns is ignored. It needs a ComfyUI whose "
    f"Qwen-Image attention takes the patch's mask; today it works for {FAMILIES_TEXT}. Leave reference_strength "
    "empty (or all 1) for Qwen-Image-Edit; reference_timing works."
)
NO_PATCH_POINT_MESSAGE = (
    "reference_strength needs a ComfyUI whose DiT runs attention patches (set_model_attn1_patch) that may return a "
    "new attention mask, in every joint-attention block: ComfyUI 0.33.0 has them for {families}; this ComfyUI's "
    "{model} did not call the patch (ComfyUI 0.3.64 has no such point). Update ComfyUI, or leave reference_strength "
    "empty (reference_timing and the stages work without it)."
)


def strength_support_problem(model_patcher) -> str | None:
    """Why this model's attention cannot take reference strengths (by its family), or None."""
    diffusion_model = model_patcher.get_model_object("diffusion_model")
    module = type(diffusion_model).__module__
    if module == QWEN_IMAGE_MODULE:
        return QWEN_MESSAGE
    if module not in SUPPORTED_MODULES:
        return (
            f"reference_strength works for {FAMILIES_TEXT} (their joint attention takes an attention patch's mask); "
            f"this model is {type(diffusion_model).__name__} ({module}). Leave reference_strength empty for it."
        )
    return None


class ReferenceStrengthPatch:
    """attn1 patch: adds ``log(s)`` on each reference's keys, ``s`` from the call's ``transformer_options``.

    Counts its calls (``calls``), so the guider can tell a ComfyUI whose attention never runs it.
    """

    def __init__(self):
        self.calls = 0

    def __deepcopy__(self, memo):  # a model clone shares the patch (it holds no tensors), so its count stays true
        return self

    def __call__(self, q, k, v, pe=None, attn_mask=None, extra_options=None, **kwargs):
        self.calls += 1
        options = extra_options or {}
        strengths = options.get(STRENGTHS_KEY)
        token_counts = options.get("reference_image_num_tokens") or []
        if not strengths or not token_counts:
            return {}
        bias = reference_key_bias(strengths, token_counts, k.shape[2], dtype=q.dtype, device=q.device)
        if bias is None:
            return {}
        return {"attn_mask": add_key_bias(attn_mask, bias)}


class ReferenceStrengths:
    """A staged guider's reference strengths: the patch on its model clone and the strengths of each call."""

    def __init__(self, strengths: Sequence[ReferenceStrength]):
        self.strengths = tuple(strengths)
        self.patch = ReferenceStrengthPatch()
        self._verified = False

    @classmethod
    def parse(cls, reference_strength: str | Sequence[ReferenceStrength] | None) -> "ReferenceStrengths | None":
        """None when there is nothing to weigh (empty, or every strength a constant 1): the model is not patched."""
        if reference_strength is None or isinstance(reference_strength, str):
            reference_strength = parse_reference_strength(reference_strength)
        if is_neutral(reference_strength):
            return None
        return cls(reference_strength)

    def patched(self, model_patcher):
        """A clone of ``model_patcher`` with the strength patch after its attn1 patches; raises where unsupported."""
        problem = strength_support_problem(model_patcher)
        if problem:
            raise DLAInputError(problem)
        model = model_patcher.clone()
        model.set_model_attn1_patch(self.patch)
        return model

    def check_count(self, reference_count: int) -> None:
        check_strength_count(self.strengths, reference_count)

    def for_call(self, active: Sequence[bool], t: float) -> tuple[float, ...]:
        """Strengths of the references present in a call at ``t`` (the active ones, in order)."""
        values = strengths_at(self.strengths, len(active), t)
        return tuple(value for value, on in zip(values, active) if on)

    @staticmethod
    def call_options(model_options: dict, values: Sequence[float]) -> dict:
        """``model_options`` whose ``transformer_options`` carry this call's strengths (a copy; the input is kept)."""
        transformer_options = dict(model_options.get("transformer_options", {}))
        transformer_options[STRENGTHS_KEY] = tuple(values)
        return {**model_options, "transformer_options": transformer_options}

    def check_applied(self, calls_before: int, values: Sequence[float], model_patcher) -> None:
        """After the first model call that needed a bias: raise when the model's attention never ran the patch."""
        if self._verified or all(value == 1.0 for value in values):
            return
        if self.patch.calls == calls_before:
            diffusion_model = model_patcher.get_model_object("diffusion_model")
            raise DLAInputError(
                NO_PATCH_POINT_MESSAGE.format(families=FAMILIES_TEXT, model=type(diffusion_model).__name__)
            )
        self._verified = True


def reference_strength_input():
    """The optional ``reference_strength`` text input of the Advanced staged nodes (empty: every strength 1)."""
    return io.String.Input(
        "reference_strength",
        default="",
        optional=True,
        tooltip="Optional: each reference's strength, one per reference in the order the conditioning holds them, "
        f"e.g. '{STRENGTH_EXAMPLE}', or a ramp over t 'high-low:start>end', e.g. '{RAMP_EXAMPLE}' (1.0 while "
        "t >= 0.95, falling linearly to 0.3 at t = 0.5, 0.3 after). A strength scales the attention every token "
        "pays to that reference (a bias log(s) on its keys in every attention layer): 1 changes nothing, 0 "
        f"ignores the reference. From 0 to 1; empty or missing values: 1. Works for {FAMILIES_TEXT} on a "
        "ComfyUI whose DiT runs attention patches (0.33.0); combines with reference_timing and the stages.",
    )
