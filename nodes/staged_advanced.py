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
from comfy_api.latest import io

from ..dla_core.schedule import TIMING_EXAMPLE
from .input_checks import checked_inputs
from .reference_strength import reference_strength_input
from .staged_guider import (
    KSamplerSettings,
    StagedCFGGuider,
    ksample_with_guider,
    resolve_stage_conditionings,
    stage_input_problem,
    tau_inputs,
)
from .types import CATEGORY


def staged_guider_advanced(
    model,
    *,
    cfg: float,
    tau1: float,
    tau2: float,
    positives: dict,
    negatives: dict,
    reference_timing: str = "",
    reference_strength: str = "",
) -> StagedCFGGuider:
    """A :class:`StagedCFGGuider` with one (positive, negative) per stage and the reference timing set.

    ``positives``/``negatives``: stage -> conditioning or None (an unconnected stage reuses the previous
    one). ``reference_timing`` (e.g. ``"0.95-0, 1-0.5"``): each reference's own active time range, in
    the order the conditionings hold them (:mod:`dla_core.schedule.timing`). ``reference_strength``
    (e.g. ``"1.0, 0.6"``): each reference's attention weight, constant or a ramp over t
    (:mod:`dla_core.schedule.strength`).
    """
    guider = StagedCFGGuider(model, tau1, tau2, reference_timing, reference_strength)
    positives, negatives = resolve_stage_conditionings(positives, negatives)
    # a stage left unconnected shares the previous stage's conditioning, and so its reference keys/values
    sources = {stage: (id(positives[stage]), id(negatives[stage])) for stage in positives}
    guider.set_stage_conds(positives, negatives, sources=sources)
    guider.set_cfg(cfg)
    return guider


def _stage_dicts(
    positive_stage1,
    positive_stage2=None,
    positive_stage3=None,
    negative_stage1=None,
    negative_stage2=None,
    negative_stage3=None,
) -> dict:
    """The six stage inputs as :func:`staged_guider_advanced`'s ``positives``/``negatives`` (stage -> conditioning)."""
    return {
        "positives": {1: positive_stage1, 2: positive_stage2, 3: positive_stage3},
        "negatives": {1: negative_stage1, 2: negative_stage2, 3: negative_stage3},
    }


def _stage_conditioning_inputs() -> list:
    """positive_stage1..3 and negative_stage1..3 (every stage after the first optional)."""
    return [
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
            tooltip="Positive conditioning of stage 3 (t < tau2), e.g. the reference latents with the text kept "
            "(FLUX.2, Qwen-Image-Edit) or zeroed (Kontext). Not connected: stage 2's.",
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
    ]


def _cfg_input(default: float) -> io.Float.Input:
    return io.Float.Input(
        "cfg",
        default=default,
        min=0.0,
        max=100.0,
        step=0.1,
        round=0.01,
        tooltip="Classifier-free guidance scale. FLUX Kontext and FLUX.2 [dev]: 1 (guidance goes through "
        "FluxGuidance); FLUX.2 [klein] base and Qwen-Image-Edit: about 4 with a negative.",
    )


def _stage_and_timing_inputs() -> list:
    """tau1, tau2 and the optional per-reference timing."""
    return [
        *tau_inputs(
            "Stage 1 while t >= tau1 (t = flow time, 1 = pure noise). 1.0: only a call at t = 1 exactly (the first "
            "step from pure noise) is in stage 1.",
            "Stage 2 while tau2 <= t < tau1, stage 3 below. Must not exceed tau1; 0 = no stage 3.",
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
    ]


STAGED_DESCRIPTION = (
    "stage 1 while t >= tau1, stage 2 while tau2 <= t < tau1, stage 3 below tau2 (t = flow time, 1 = pure noise). "
    "Wire e.g. text only to stage 1 and text + reference latents to stages 2 and 3 to delay identity and avoid "
    "copy-paste (FLUX.2, Qwen-Image-Edit, Kontext). An unconnected stage reuses the previous stage's "
    "conditioning; reference_timing gives each reference its own range of t. With every step in one stage the "
    "result equals ComfyUI's sampler with that stage's conditioning."
)


class DLAStagedKSamplerAdvanced(io.ComfyNode):
    """KSampler with one conditioning per denoising stage (delayed identity for FLUX.2, Kontext, Qwen-Image-Edit)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DLAStagedKSamplerAdvanced",
            display_name="Staged KSampler (Advanced, DLA)",
            category=CATEGORY,
            description="One sampler pass whose conditioning changes with the denoising stage: " + STAGED_DESCRIPTION,
            inputs=[
                io.Model.Input(
                    "model", tooltip="The diffusion model (FLUX.2, FLUX Kontext, Qwen-Image-Edit, any ComfyUI MODEL)."
                ),
                *_stage_conditioning_inputs(),
                io.Latent.Input("latent_image", tooltip="The latent to denoise (empty latent for text-to-image)."),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="Noise seed."
                ),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Denoising steps."),
                _cfg_input(1.0),
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
                *_stage_and_timing_inputs(),
                reference_strength_input(),
            ],
            outputs=[io.Latent.Output(tooltip="The denoised latent.")],
        )

    validate_inputs = checked_inputs(stage_input_problem)

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
        reference_timing="",
        reference_strength="",
        **later_stages,  # positive_stage2/3, negative_stage1..3: those connected
    ) -> io.NodeOutput:
        stages = _stage_dicts(positive_stage1, **later_stages)
        guider = staged_guider_advanced(
            model,
            cfg=cfg,
            tau1=tau1,
            tau2=tau2,
            reference_timing=reference_timing,
            reference_strength=reference_strength,
            **stages,
        )
        settings = KSamplerSettings(
            seed=seed, steps=steps, sampler_name=sampler_name, scheduler=scheduler, denoise=denoise
        )
        return io.NodeOutput(ksample_with_guider(guider, model, latent_image, settings))


class DLAStagedGuiderAdvanced(io.ComfyNode):
    """The advanced staged conditioning as a GUIDER (FLUX.2's own scheduler, any sampler and noise)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DLAStagedGuiderAdvanced",
            display_name="Staged Guider (Advanced, DLA)",
            category=CATEGORY,
            description="A GUIDER for SamplerCustomAdvanced whose conditioning changes with the denoising stage: "
            + STAGED_DESCRIPTION
            + " Use it where the model has its own sigmas node (Flux2Scheduler for FLUX.2).",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (FLUX.2, FLUX Kontext, Qwen-Image-Edit, ...)."),
                *_stage_conditioning_inputs(),
                _cfg_input(1.0),
                *_stage_and_timing_inputs(),
                reference_strength_input(),
            ],
            outputs=[io.Guider.Output(tooltip="Guider for SamplerCustomAdvanced.")],
        )

    validate_inputs = checked_inputs(stage_input_problem)

    @classmethod
    def execute(
        cls,
        model,
        positive_stage1,
        cfg,
        tau1,
        tau2,
        reference_timing="",
        reference_strength="",
        **later_stages,  # positive_stage2/3, negative_stage1..3: those connected
    ) -> io.NodeOutput:
        stages = _stage_dicts(positive_stage1, **later_stages)
        guider = staged_guider_advanced(
            model,
            cfg=cfg,
            tau1=tau1,
            tau2=tau2,
            reference_timing=reference_timing,
            reference_strength=reference_strength,
            **stages,
        )
        return io.NodeOutput(guider)
