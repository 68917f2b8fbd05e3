"""Staged KSampler, Staged Guider and Stage Conditioning: the paper's three-stage schedule."""

from __future__ import annotations

import inspect

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io

from ..dla_core.errors import DLAInputError
from ..dla_core.schedule import DEFAULT_TAU1, DEFAULT_TAU2, validate_taus
from .input_checks import checked_widgets, widget_problem
from .staged_sampling import StagedCFGGuider, stage_conditionings
from .types import CATEGORY, IDENTITY, ReferenceIdentity, expect

STAGE_OPTIONS = ["1: MLLM only", "2: MLLM + identity", "3: identity only"]


def _optional_identity(identity):
    return None if identity is None else expect(identity, ReferenceIdentity, "identity", "VAE Identity Encode")


def validate_taus_input(tau1, tau2):
    """For the staged nodes' ``validate_inputs``: a message instead of an exception; linked (unknown) values pass."""
    if tau1 is None or tau2 is None:
        return True
    try:
        validate_taus(tau1, tau2)
    except ValueError as exc:
        return str(exc)
    return True


def make_staged_guider(
    model, positive, cfg: float, tau1: float, tau2: float, negative=None, identity=None, stage3_conditioning=None
) -> StagedCFGGuider:
    """A :class:`StagedCFGGuider` with every stage's conditioning set."""
    guider = StagedCFGGuider(model, tau1, tau2)
    guider.set_conds(positive, negative, _optional_identity(identity), stage3_conditioning)
    guider.set_cfg(cfg)
    return guider


LATENT_SIZE_TAGS = ("downscale_ratio_spacial", "downscale_ratio_temporal")


def consumed_size_tags() -> tuple[str, ...]:
    """The latent size tags this ComfyUI's KSampler reads (and drops from its output); none on 0.3.64."""
    parameters = inspect.signature(comfy.sample.fix_empty_latent_channels).parameters
    return tuple(tag for tag in LATENT_SIZE_TAGS if tag in parameters)


def fit_empty_latent(model, latent: dict):
    """``latent["samples"]`` made fit for ``model`` exactly as this ComfyUI's KSampler does.

    Newer ComfyUI's empty-latent nodes tag the latent with the VAE downscale it assumed
    (``downscale_ratio_spacial``), and the KSampler resizes an empty latent to the model's own
    ratio (e.g. 8 -> 16 for FLUX.2); older ComfyUI has neither tags nor the resize.
    """
    tags = [latent.get(tag) for tag in consumed_size_tags()]
    return comfy.sample.fix_empty_latent_channels(model, latent["samples"], *tags)


def sampled_latent(latent: dict, samples) -> dict:
    """The output LATENT like this ComfyUI's KSampler: the input's keys minus the size tags it consumed."""
    consumed = consumed_size_tags()
    out = {key: value for key, value in latent.items() if key not in consumed}
    dtype = getattr(comfy.model_management, "intermediate_dtype", None)
    kwargs = {"dtype": dtype()} if dtype is not None else {}
    out["samples"] = samples.to(device=comfy.model_management.intermediate_device(), **kwargs)
    return out


def ksample_with_guider(guider, model, seed, steps, sampler_name, scheduler, latent, denoise) -> dict:
    """KSampler semantics (seeded noise with batch_index, denoise, noise_mask, previews) with any guider.

    The one execution function of every staged sampler node; a variant only builds its guider.
    """
    latent_image = fit_empty_latent(model, latent)
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    sigmas = comfy.samplers.KSampler(
        model,
        steps=steps,
        device=model.load_device,
        sampler=sampler_name,
        scheduler=scheduler,
        denoise=denoise,
        model_options=model.model_options,
    ).sigmas
    sampler = comfy.samplers.sampler_object(sampler_name)
    callback = latent_preview.prepare_callback(model, steps)
    samples = guider.sample(
        noise,
        latent_image,
        sampler,
        sigmas,
        denoise_mask=latent.get("noise_mask"),
        callback=callback,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
        seed=seed,
    )
    return sampled_latent(latent, samples)


def staged_ksample(
    model,
    seed,
    steps,
    cfg,
    sampler_name,
    scheduler,
    positive,
    latent,
    denoise,
    tau1,
    tau2,
    negative=None,
    identity=None,
    stage3_conditioning=None,
) -> dict:
    """The Staged KSampler: :func:`ksample_with_guider` with the DLA's staged guider."""
    guider = make_staged_guider(model, positive, cfg, tau1, tau2, negative, identity, stage3_conditioning)
    return ksample_with_guider(guider, model, seed, steps, sampler_name, scheduler, latent, denoise)


def tau_inputs(tau1_tooltip: str, tau2_tooltip: str) -> list:
    """The two stage thresholds every staged node takes (paper defaults), with the node's own tooltips."""
    return [
        io.Float.Input("tau1", default=DEFAULT_TAU1, min=0.0, max=1.0, step=0.01, tooltip=tau1_tooltip),
        io.Float.Input("tau2", default=DEFAULT_TAU2, min=0.0, max=1.0, step=0.01, tooltip=tau2_tooltip),
    ]


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

    @classmethod
    def validate_inputs(cls, tau1=None, tau2=None, **kwargs):
        return widget_problem(cls, {"tau1": tau1, "tau2": tau2, **kwargs}) or validate_taus_input(tau1, tau2)

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
        negative=None,
        identity=None,
        stage3_conditioning=None,
    ) -> io.NodeOutput:
        return io.NodeOutput(
            staged_ksample(
                model,
                seed,
                steps,
                cfg,
                sampler_name,
                scheduler,
                positive,
                latent_image,
                denoise,
                tau1,
                tau2,
                negative,
                identity,
                stage3_conditioning,
            )
        )


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

    @classmethod
    def validate_inputs(cls, tau1=None, tau2=None, **kwargs):
        return widget_problem(cls, {"tau1": tau1, "tau2": tau2, **kwargs}) or validate_taus_input(tau1, tau2)

    @classmethod
    def execute(
        cls, model, positive, cfg, tau1, tau2, negative=None, identity=None, stage3_conditioning=None
    ) -> io.NodeOutput:
        return io.NodeOutput(
            make_staged_guider(model, positive, cfg, tau1, tau2, negative, identity, stage3_conditioning)
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

    @classmethod
    def validate_inputs(cls, **kwargs):
        return checked_widgets(cls, **kwargs)

    @classmethod
    def execute(cls, positive, stage: str, identity=None, stage3_conditioning=None) -> io.NodeOutput:
        number = STAGE_OPTIONS.index(stage) + 1
        conditioning, _ = stage_conditionings(positive, None, _optional_identity(identity), stage3_conditioning)[number]
        if conditioning is None:
            raise DLAInputError(
                "This conditioning carries no 'MLLM off' conditioning for stage 3: connect the output of Dual Layer "
                "Aggregation or a stage3_conditioning."
            )
        return io.NodeOutput(conditioning)
