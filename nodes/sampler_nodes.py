"""Staged KSampler, Staged Guider and Stage Conditioning: the paper's three-stage schedule."""

from __future__ import annotations

import logging

import comfy.samplers
from comfy_api.latest import io

from ..dla_core.errors import DLAInputError
from .input_checks import checked_inputs
from .staged_guider import (
    KSamplerSettings,
    StagedCFGGuider,
    ksample_with_guider,
    stage_conditionings,
    stage_input_problem,
    tau_inputs,
)
from .types import CATEGORY, IDENTITY, ReferenceIdentity, expect

STAGE_OPTIONS = ["1: MLLM only", "2: MLLM + identity", "3: identity only"]


def _optional_identity(identity):
    return None if identity is None else expect(identity, ReferenceIdentity, "identity", "VAE Identity Encode")


def make_staged_guider(
    model, positive, *, cfg: float, tau1: float, tau2: float, negative=None, identity=None, stage3_conditioning=None
) -> StagedCFGGuider:
    """A :class:`StagedCFGGuider` with the DLA's stages: MLLM; MLLM + identity; "MLLM off" (or override) + identity."""
    guider = StagedCFGGuider(model, tau1, tau2)
    identity = _optional_identity(identity)
    if identity is None:
        logging.warning("DLA Staged sampler: no IDENTITY connected; stages 2 and 3 get no reference latents.")
    guider.set_stage_conds(*stage_conditionings(positive, negative, identity, stage3_conditioning))
    guider.set_cfg(cfg)
    return guider


def staged_ksample(*, model, positive, latent: dict, settings: KSamplerSettings, **guider_inputs) -> dict:
    """The Staged KSampler: :func:`ksample_with_guider` with the DLA's staged guider.

    ``guider_inputs``: :func:`make_staged_guider`'s keyword arguments (cfg, tau1, tau2, negative, ...).
    """
    return ksample_with_guider(make_staged_guider(model, positive, **guider_inputs), model, latent, settings)


def _stage_inputs() -> list:
    return tau_inputs(
        "Stage 1 (MLLM only) while t >= tau1; t is the flow time (1 = pure noise). 0 with tau2 0 = every "
        "step in stage 1 (no identity).",
        "Stage 2 (MLLM + identity) while tau2 <= t < tau1, stage 3 (identity only) below. Must not exceed "
        "tau1; 0 = no stage 3.",
    )


def _optional_conditioning_inputs() -> list:
    return [
        io.Conditioning.Input(
            "negative",
            optional=True,
            tooltip="Negative conditioning (used when cfg > 1). Not connected: the DLA's 'MLLM off' conditioning. It "
            "gets the reference latents in stages 2 and 3 like the positive.",
        ),
        IDENTITY.Input(
            "identity", optional=True, tooltip="Reference latents from VAE Identity Encode, added in stages 2 and 3."
        ),
        io.Conditioning.Input(
            "stage3_conditioning",
            optional=True,
            tooltip="Replaces the DLA's learned 'MLLM off' conditioning in stage 3 (e.g. ConditioningZeroOut, or a "
            "text prompt).",
        ),
    ]


class DLAStagedKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DLAStagedKSampler",
            display_name="Staged KSampler",
            category=CATEGORY,
            description=(
                "KSampler with the paper's three stages in one pass: stage 1 (t >= tau1) MLLM conditioning only, "
                "stage 2 MLLM + reference latents, stage 3 (t < tau2) reference latents with the MLLM switched off. "
                "The stage is chosen per model call from its sigma, so every sampler and scheduler works."
            ),
            inputs=[
                io.Model.Input("model", tooltip="FLUX model (UNETLoader + LoRA)."),
                io.Conditioning.Input("positive", tooltip="MLLM conditioning from Dual Layer Aggregation."),
                io.Latent.Input(
                    "latent_image",
                    tooltip="Latent to denoise (Empty Latent / EmptySD3LatentImage, or an encoded image with denoise < "
                    "1). Its batch size is honoured.",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Random seed for the noise.",
                ),
                io.Int.Input("steps", default=28, min=1, max=10000, tooltip="Denoising steps (the paper: 28)."),
                io.Float.Input(
                    "cfg",
                    default=1.0,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    round=0.01,
                    tooltip="Classifier-free guidance scale. FLUX.1-dev: 1 (its guidance is the 'guidance' of the "
                    "conditioning).",
                ),
                io.Combo.Input(
                    "sampler_name",
                    options=comfy.samplers.SAMPLER_NAMES,
                    default="euler",
                    tooltip="Sampling algorithm; all of ComfyUI's work, second-order ones too.",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=comfy.samplers.SCHEDULER_NAMES,
                    default="simple",
                    tooltip="Noise schedule; FLUX uses 'simple' (its shift comes from the model).",
                ),
                io.Float.Input(
                    "denoise",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Amount of denoising; below 1 sampling starts at a lower t, possibly after stage 1.",
                ),
                *_stage_inputs(),
                *_optional_conditioning_inputs(),
            ],
            outputs=[io.Latent.Output(tooltip="The denoised latent.")],
        )

    validate_inputs = checked_inputs(stage_input_problem)

    @classmethod
    def execute(
        cls,
        model,
        positive,
        latent_image,
        seed,
        steps,
        cfg,
        sampler_name,
        scheduler,
        denoise,
        tau1,
        tau2,
        **optional_conditionings,  # negative, identity, stage3_conditioning: those connected
    ) -> io.NodeOutput:
        settings = KSamplerSettings(
            seed=seed, steps=steps, sampler_name=sampler_name, scheduler=scheduler, denoise=denoise
        )
        latent = staged_ksample(
            model=model,
            positive=positive,
            latent=latent_image,
            settings=settings,
            cfg=cfg,
            tau1=tau1,
            tau2=tau2,
            **optional_conditionings,
        )
        return io.NodeOutput(latent)


class DLAStagedGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DLAStagedGuider",
            display_name="Staged Guider",
            category=CATEGORY,
            description="The Staged KSampler's three-stage conditioning as a GUIDER for SamplerCustomAdvanced (any "
            "noise, sampler and sigmas).",
            inputs=[
                io.Model.Input("model", tooltip="FLUX model (UNETLoader + LoRA)."),
                io.Conditioning.Input("positive", tooltip="MLLM conditioning from Dual Layer Aggregation."),
                io.Float.Input(
                    "cfg",
                    default=1.0,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    round=0.01,
                    tooltip="Classifier-free guidance scale. FLUX.1-dev: 1.",
                ),
                *_stage_inputs(),
                *_optional_conditioning_inputs(),
            ],
            outputs=[io.Guider.Output(tooltip="Guider for SamplerCustomAdvanced.")],
        )

    validate_inputs = checked_inputs(stage_input_problem)

    @classmethod
    def execute(cls, model, positive, cfg, tau1, tau2, **optional_conditionings) -> io.NodeOutput:
        """``optional_conditionings``: negative, identity, stage3_conditioning, those connected."""
        return io.NodeOutput(
            make_staged_guider(model, positive, cfg=cfg, tau1=tau1, tau2=tau2, **optional_conditionings)
        )


class DLAStageConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DLAStageConditioning",
            display_name="Stage Conditioning (DLA)",
            category=CATEGORY,
            description=(
                "The positive conditioning the Staged KSampler uses in one stage, for any native sampler: to try a "
                "single stage alone or to build custom schedules."
            ),
            inputs=[
                io.Conditioning.Input("positive", tooltip="MLLM conditioning from Dual Layer Aggregation."),
                io.Combo.Input(
                    "stage",
                    options=STAGE_OPTIONS,
                    default=STAGE_OPTIONS[1],
                    tooltip="Which stage's conditioning to output.",
                ),
                IDENTITY.Input(
                    "identity",
                    optional=True,
                    tooltip="Reference latents from VAE Identity Encode (used by stages 2 and 3).",
                ),
                io.Conditioning.Input(
                    "stage3_conditioning",
                    optional=True,
                    tooltip="Replaces the DLA's 'MLLM off' conditioning for stage 3.",
                ),
            ],
            outputs=[io.Conditioning.Output(tooltip="The stage's conditioning.")],
        )

    validate_inputs = checked_inputs()

    @classmethod
    def execute(cls, positive, stage: str, identity=None, stage3_conditioning=None) -> io.NodeOutput:
        number = STAGE_OPTIONS.index(stage) + 1
        positives, _ = stage_conditionings(positive, None, _optional_identity(identity), stage3_conditioning)
        conditioning = positives[number]
        if conditioning is None:
            raise DLAInputError(
                "This conditioning carries no 'MLLM off' conditioning for stage 3: connect the output of Dual Layer "
                "Aggregation or a stage3_conditioning."
            )
        return io.NodeOutput(conditioning)
