"""Staged sampling for any model: one conditioning per stage.

``DLAStagedKSamplerAdvanced`` runs ONE sampler pass whose positive/negative follow the stage
of each model call (stage 1 ``t >= tau1``, stage 2 ``tau2 <= t < tau1``, stage 3 ``t < tau2``,
``t`` = the model's normalised flow time), with conditionings the artist wires per stage.
That makes the paper's delayed identity available to models that already read reference
latents, without any training:

* FLUX Kontext: stage 1 text only; stage 2 text + reference latents; stage 3 the references
  with the text zeroed (reference-heavy).
* Qwen-Image-Edit: stage 1 the joint Qwen2.5-VL conditioning without reference latents;
  stages 2 and 3 the same conditioning with them.

When every step falls in one stage the result is bit-identical to ComfyUI's ``KSampler``
given that stage's conditioning: the stage guider is the pack's ``StagedCFGGuider``, which
calls ComfyUI's own ``sampling_function`` on conditionings prepared by ComfyUI's own code.
"""

from __future__ import annotations

import comfy.samplers
import node_helpers
from comfy_api.latest import io

from ..dla_core.errors import DLAInputError
from ..dla_core.reference_timing import TIMING_EXAMPLE, parse_reference_timing
from ..dla_core.schedule import DEFAULT_TAU1, DEFAULT_TAU2
from ..dla_core.staging import ALL_STAGES
from .sampler_nodes import ksample_with_guider, validate_taus_input
from .staged_sampling import STAGE_COND_KEYS, StagedCFGGuider
from .types import CATEGORY


def resolve_stage_conditionings(positives: dict, negatives: dict) -> tuple[dict, dict]:
    """Fill unconnected stages: a missing stage takes the previous stage's conditioning.

    ``positives[1]`` is required; ``negatives`` may be all None (cfg 1).
    """
    if positives.get(1) is None:
        raise DLAInputError("Connect positive_stage1: it is the conditioning of the first (noisiest) stage.")
    pos, neg = {}, {}
    for stage in ALL_STAGES:
        pos[stage] = positives.get(stage) if positives.get(stage) is not None else pos.get(stage - 1)
        neg[stage] = negatives.get(stage) if negatives.get(stage) is not None else neg.get(stage - 1)
    return pos, neg


class PerStageGuider(StagedCFGGuider):
    """The pack's staged CFG guider with an explicit (positive, negative) per stage."""

    def set_stage_conds(self, positives: dict, negatives: dict) -> None:
        positives, negatives = resolve_stage_conditionings(positives, negatives)
        conds = {}
        self._available = {}
        for stage in ALL_STAGES:
            positive_key, negative_key = STAGE_COND_KEYS[stage]
            self._available[stage] = (positives[stage] is not None, negatives[stage] is not None)
            conds[positive_key] = node_helpers.conditioning_set_values(positives[stage], {"prompt_type": "positive"})
            if negatives[stage] is not None:
                conds[negative_key] = node_helpers.conditioning_set_values(
                    negatives[stage], {"prompt_type": "negative"}
                )
        self.original_conds = {}
        self.inner_set_conds(self.with_timed_references(conds))


def staged_ksample_advanced(
    model,
    seed,
    steps,
    cfg,
    sampler_name,
    scheduler,
    latent,
    denoise,
    tau1,
    tau2,
    positives: dict,
    negatives: dict,
    reference_timing: str = "",
) -> dict:
    """The advanced Staged KSampler: :func:`ksample_with_guider` with per-stage conditioning.

    ``reference_timing`` (e.g. ``"0.95-0, 1-0.5"``): each reference's own active time range, in
    the order the conditionings hold them (:mod:`dla_core.reference_timing`).
    """
    guider = PerStageGuider(model, tau1, tau2, parse_reference_timing(reference_timing))
    guider.set_stage_conds(positives, negatives)
    guider.set_cfg(cfg)
    return ksample_with_guider(guider, model, seed, steps, sampler_name, scheduler, latent, denoise)


class DLAStagedKSamplerAdvanced(io.ComfyNode):
    """KSampler with one conditioning per denoising stage (delayed identity for Kontext, Qwen-Image-Edit, ...)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DLAStagedKSamplerAdvanced",
            display_name="Staged KSampler (Advanced, DLA)",
            category=CATEGORY,
            description=(
                "One sampler pass whose conditioning changes with the denoising stage: stage 1 while t >= tau1, stage "
                "2 "
                "while tau2 <= t < tau1, stage 3 below tau2 (t = flow time, 1 = pure noise). Wire e.g. text only to "
                "stage 1 and text + reference latents to stages 2 and 3 to delay identity and avoid copy-paste. "
                "An unconnected stage reuses the previous stage's conditioning. With every step in one stage the "
                "result equals ComfyUI's KSampler with that stage's conditioning."
            ),
            inputs=[
                io.Model.Input(
                    "model", tooltip="The diffusion model (FLUX Kontext, Qwen-Image-Edit, any ComfyUI MODEL)."
                ),
                io.Conditioning.Input(
                    "positive_stage1",
                    tooltip="Positive conditioning of stage 1 (t >= tau1), e.g. the prompt without reference latents.",
                ),
                io.Conditioning.Input(
                    "positive_stage2",
                    optional=True,
                    tooltip="Positive conditioning of stage 2 (tau2 <= t < tau1), e.g. the prompt + reference latents. "
                    "Not connected: stage 1's.",
                ),
                io.Conditioning.Input(
                    "positive_stage3",
                    optional=True,
                    tooltip="Positive conditioning of stage 3 (t < tau2), e.g. reference latents with the text zeroed. "
                    "Not connected: stage 2's.",
                ),
                io.Conditioning.Input(
                    "negative_stage1", optional=True, tooltip="Negative conditioning of stage 1 (needed when cfg > 1)."
                ),
                io.Conditioning.Input(
                    "negative_stage2",
                    optional=True,
                    tooltip="Negative of stage 2; give it the same reference latents as the positive. Not connected: "
                    "stage 1's.",
                ),
                io.Conditioning.Input(
                    "negative_stage3", optional=True, tooltip="Negative of stage 3. Not connected: stage 2's."
                ),
                io.Latent.Input("latent_image", tooltip="The latent to denoise (empty latent for text-to-image)."),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="Noise seed."
                ),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Denoising steps."),
                io.Float.Input(
                    "cfg",
                    default=1.0,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    round=0.01,
                    tooltip="Classifier-free guidance scale. FLUX Kontext: 1 (guidance goes through FluxGuidance); "
                    "Qwen-Image-Edit: about 4 with a negative.",
                ),
                io.Combo.Input(
                    "sampler_name",
                    options=comfy.samplers.SAMPLER_NAMES,
                    tooltip="Sampler; every ComfyUI sampler works (the stage is chosen per model call).",
                ),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, tooltip="Scheduler."),
                io.Float.Input(
                    "denoise",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Fraction of the schedule to run (1 = from pure noise).",
                ),
                io.Float.Input(
                    "tau1",
                    default=DEFAULT_TAU1,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Stage 1 while t >= tau1 (t = flow time, 1 = pure noise). 1.0 with no stage-1-only steps "
                    "skips stage 1.",
                ),
                io.Float.Input(
                    "tau2",
                    default=DEFAULT_TAU2,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Stage 2 while tau2 <= t < tau1, stage 3 below. Must not exceed tau1; 0 = no stage 3.",
                ),
                io.String.Input(
                    "reference_timing",
                    default="",
                    optional=True,
                    tooltip="Optional: each reference's own active range of t, one 'high-low' per reference in the "
                    f"order the conditioning holds them, e.g. '{TIMING_EXAMPLE}' (reference 1 from t < 0.95 to the "
                    "end, reference 2 from the start until t = 0.5). Active while low <= t < high (high = 1 includes "
                    "pure noise). References after the last range, and all when empty, stay active in every stage "
                    "that carries them. Works inside the stages: a reference is used only where its stage's "
                    "conditioning holds it and its range is active.",
                ),
            ],
            outputs=[io.Latent.Output(tooltip="The denoised latent.")],
        )

    @classmethod
    def validate_inputs(cls, tau1=None, tau2=None, reference_timing="", **kwargs):
        checked = validate_taus_input(tau1, tau2)
        if checked is not True:
            return checked
        try:
            parse_reference_timing(reference_timing)
        except DLAInputError as error:
            return str(error)
        return True

    @classmethod
    def execute(
        cls,
        model,
        positive_stage1,
        latent_image,
        seed,
        steps,
        cfg,
        sampler_name,
        scheduler,
        denoise,
        tau1,
        tau2,
        positive_stage2=None,
        positive_stage3=None,
        negative_stage1=None,
        negative_stage2=None,
        negative_stage3=None,
        reference_timing="",
    ) -> io.NodeOutput:
        positives = {1: positive_stage1, 2: positive_stage2, 3: positive_stage3}
        negatives = {1: negative_stage1, 2: negative_stage2, 3: negative_stage3}
        return io.NodeOutput(
            staged_ksample_advanced(
                model,
                seed,
                steps,
                cfg,
                sampler_name,
                scheduler,
                latent_image,
                denoise,
                tau1,
                tau2,
                positives,
                negatives,
                reference_timing,
            )
        )
