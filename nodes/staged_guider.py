"""The staged guider and what every staged sampler node shares (a library: it defines no node).

Stage of a call (the paper's multi-stage denoising, arXiv 2605.26111): from the normalised time
``t`` of its sigma (``t = sigma`` for FLUX), via ``dla_core.schedule``. The three stages'
positive/negative conditionings are ordinary ComfyUI conditionings, all prepared by ComfyUI's
own cond processing, and each call goes through the same ``sampling_function`` as ComfyUI's
``CFGGuider``. So when every call falls in one stage, sampling is bit-identical to the native
sampler given that stage's conditioning; nothing in the model is patched, only conditioning keys
differ per stage.

Used by ``sampler_nodes`` (the DLA's Staged KSampler/Guider: positive + identity + stage 3) and
``staged_advanced`` (one conditioning per stage): both build a :class:`StagedCFGGuider`, give it
per-stage conditionings with :meth:`StagedCFGGuider.set_stage_conds` and sample it with
:func:`ksample_with_guider`; their tau inputs and checks come from :func:`tau_inputs` and
:func:`stage_input_problem`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Sequence

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import node_helpers
from comfy_api.latest import io

from ..dla_core.errors import DLAInputError
from ..dla_core.schedule import (
    ALL_STAGES,
    DEFAULT_TAU1,
    DEFAULT_TAU2,
    STAGE_LABELS,
    ReferenceRange,
    StageTaus,
    active_mask,
    check_reference_count,
    describe_mask,
    describe_schedule,
    parse_reference_timing,
    probe_times,
    validate_taus,
)
from ..dla_core.schedule.strength import ReferenceStrength, describe_strengths, parse_reference_strength
from .model_fit import check_conditioning_fits_model
from .progress import executing_node_id, show_text
from .reference_strength import ReferenceStrengths
from .types import MLLM_OFF_KEY, ReferenceIdentity

# Cond keys per stage; stage 1 uses ComfyUI's own names, which some extensions look for.
STAGE_COND_KEYS = {
    1: ("positive", "negative"),
    2: ("positive_stage2", "negative_stage2"),
    3: ("positive_stage3", "negative_stage3"),
}


def mllm_off(conditioning: list) -> list | None:
    """``conditioning`` with the MLLM switched off: the DLA's null tokens + null pooled vector.

    Every other key of each entry (guidance, area, mask, strength, hooks, reference latents
    already attached) is kept. Returns None when an entry carries no "MLLM off" conditioning
    (it did not come from Dual Layer Aggregation).
    """
    out = []
    for tokens, values in conditioning:
        off = values.get(MLLM_OFF_KEY)
        if off is None:
            return None
        off_tokens, off_values = off[0]
        new_values = {key: value for key, value in values.items() if key != MLLM_OFF_KEY}
        new_values["pooled_output"] = off_values.get("pooled_output")
        out.append([off_tokens, new_values])
    return out


def with_identity(conditioning: list, identity: ReferenceIdentity | None) -> list:
    """``conditioning`` plus the identity's reference latents (appended) and placement method."""
    if identity is None:
        return conditioning
    values = identity.conditioning_values()
    out = node_helpers.conditioning_set_values(
        conditioning, {"reference_latents": values["reference_latents"]}, append=True
    )
    return node_helpers.conditioning_set_values(out, {"reference_latents_method": values["reference_latents_method"]})


def stage_conditionings(
    positive: list, negative: list | None, identity: ReferenceIdentity | None, stage3_positive: list | None = None
) -> tuple[dict[int, list | None], dict[int, list | None]]:
    """The DLA's (positives, negatives) per stage (stage -> conditioning); None where it cannot be formed.

    Stage 1: MLLM, no identity. Stage 2: MLLM + identity. Stage 3: "MLLM off" (or the
    override) + identity. The negative mirrors the identity state of its stage; without a
    negative the DLA's "MLLM off" conditioning is the unconditional.
    """
    off = mllm_off(positive)
    stage3 = stage3_positive if stage3_positive is not None else off
    base_negative = negative if negative is not None else off
    positives = {
        1: positive,
        2: with_identity(positive, identity),
        3: None if stage3 is None else with_identity(stage3, identity),
    }
    negatives = {1: base_negative}
    for stage in (2, 3):
        negatives[stage] = None if base_negative is None else with_identity(base_negative, identity)
    return positives, negatives


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


def reference_count(conditioning: list | None) -> int:
    """The most reference latents any entry of ``conditioning`` carries (0 for None)."""
    return max((len(values.get("reference_latents") or []) for _, values in conditioning or []), default=0)


def with_active_references(conditioning: list, mask: tuple[bool, ...]) -> list:
    """``conditioning`` holding only the reference latents whose ``mask`` entry is true (in order).

    References beyond the mask are kept. An entry left without references loses the
    ``reference_latents`` key (and its placement method), exactly like a conditioning that never
    had any, so that sampling equals the native sampler on that conditioning.
    """
    out = []
    for tokens, values in conditioning:
        references = values.get("reference_latents")
        if not references:
            out.append([tokens, values])
            continue
        kept = [latent for index, latent in enumerate(references) if index >= len(mask) or mask[index]]
        new_values = dict(values)
        if kept:
            new_values["reference_latents"] = kept
        else:
            new_values.pop("reference_latents")
            new_values.pop("reference_latents_method", None)
        out.append([tokens, new_values])
    return out


def timed_key(key: str, mask: tuple[bool, ...]) -> str:
    """Cond key of ``key``'s conditioning restricted to the references of ``mask`` (``key`` when all are on)."""
    return key if all(mask) else f"{key}|refs={''.join('1' if on else '0' for on in mask)}"


def reference_kv_caches(model_patcher) -> list:
    """ComfyUI's ``FluxKVCache`` patches on this model (newer ComfyUI; an attention patch named ``KV_Attn_Input``)."""
    options = getattr(model_patcher, "model_options", {}) or {}
    patches = options.get("transformer_options", {}).get("patches", {})
    return [patch for patch in patches.get("attn1_patch", []) if type(patch).__name__ == "KV_Attn_Input"]


KV_CACHE_MESSAGE = (
    "This model goes through 'Flux KV Cache', which keeps the reference images' keys/values from the first step "
    "that sees them, whatever text produced them; stages {stages} of this schedule all carry references with "
    "different conditioning, so later stages would reuse the wrong keys/values. Remove the Flux KV Cache node, or "
    "use a schedule with references in only one stage (tau2 = 0: no stage 3; or tau1 = tau2: no stage 2)."
)


def normalised_time(model_sampling, sigma) -> float:
    """Model time in [0, 1] of a sigma: ``timestep(sigma) / timestep(sigma_max)`` (= sigma for FLUX)."""
    t_max = float(model_sampling.timestep(model_sampling.sigma_max))
    return float(model_sampling.timestep(sigma)) / t_max


class ModelCall(NamedTuple):
    """One model call of a staged sampling run, as :func:`record_model_calls` sees it."""

    guider: "StagedCFGGuider"
    t: float
    stage: int
    references: tuple[bool, ...]  # which references were active
    strengths: tuple[float, ...] = ()  # reference_strength of the active references (empty: not set)


# Test hook: called with every ModelCall of every staged guider; empty (one falsy check per call) in production.
MODEL_CALL_OBSERVERS: list[Callable[[ModelCall], None]] = []


@contextlib.contextmanager
def record_model_calls() -> Iterator[list[ModelCall]]:
    """The model calls of every staged guider that samples inside the ``with`` block (for tests)."""
    calls: list[ModelCall] = []
    MODEL_CALL_OBSERVERS.append(calls.append)
    try:
        yield calls
    finally:
        MODEL_CALL_OBSERVERS.remove(calls.append)


class StagedCFGGuider(comfy.samplers.CFGGuider):
    """CFG guider whose positive/negative follow the DLA stage of each model call's sigma.

    The taus and the reference timing are checked here, once; the stage of a model call is then a
    lookup. Conditionings come in through :meth:`set_stage_conds`, the one way to set them.
    """

    def __init__(
        self,
        model_patcher,
        tau1: float,
        tau2: float,
        reference_timing: str | Sequence[ReferenceRange] = (),
        reference_strength: str | Sequence[ReferenceStrength] = (),
    ):
        self.taus = StageTaus(tau1, tau2)
        if isinstance(reference_timing, str):
            reference_timing = parse_reference_timing(reference_timing)
        # None unless some strength differs from 1; then the model is a clone carrying the attention patch
        self.reference_strength = ReferenceStrengths.parse(reference_strength)
        if self.reference_strength is not None:
            model_patcher = self.reference_strength.patched(model_patcher)
        super().__init__(model_patcher)
        self.reference_timing = tuple(reference_timing)
        self._available: dict[int, tuple[bool, bool]] = {}  # stage -> (has positive, has negative)
        self._reference_counts: dict[int, int] = {}  # stage -> references its conditionings carry
        # stage -> what its (positive, negative) came from; stages sharing a source share keys/values
        self._sources: dict[int, object] = {}
        self._shown_stage: int | None = None  # stage last shown on the node ("stage k/3: ..." progress text)
        self._node_id: str | None = None

    @property
    def tau1(self) -> float:
        return self.taus.tau1

    @property
    def tau2(self) -> float:
        return self.taus.tau2

    def set_stage_conds(self, positives: dict, negatives: dict, sources: dict | None = None) -> None:
        """Set every stage's conditioning: ``positives``/``negatives`` map stage (1, 2, 3) -> conditioning or None.

        A stage whose positive is None cannot be sampled (an error if the schedule reaches it); a missing
        negative is fine at cfg 1. ``sources`` (stage -> any hashable) says which stages were given the
        same conditioning, so their reference keys/values are the same (the Flux KV Cache check); by
        default every stage is its own source.
        """
        self._sources = dict(sources) if sources is not None else {stage: stage for stage in ALL_STAGES}
        self._available = {}
        conds = {}
        for stage in ALL_STAGES:
            stage_positive, stage_negative = positives.get(stage), negatives.get(stage)
            positive_key, negative_key = STAGE_COND_KEYS[stage]
            self._available[stage] = (stage_positive is not None, stage_negative is not None)
            if stage_positive is not None:
                conds[positive_key] = node_helpers.conditioning_set_values(stage_positive, {"prompt_type": "positive"})
            if stage_negative is not None:
                conds[negative_key] = node_helpers.conditioning_set_values(stage_negative, {"prompt_type": "negative"})
        self.original_conds = {}
        self.inner_set_conds(self.with_timed_references(conds))

    def _stage_and_mask(self, t: float) -> tuple[int, tuple[bool, ...]]:
        stage = self.taus.stage(t)
        return stage, active_mask(self.reference_timing, self._reference_counts.get(stage, 0), t)

    def _probe_pairs(self, t_high: float, t_low: float) -> list[tuple[int, tuple[bool, ...]]]:
        """Every (stage, active references) a model call can meet for times in ``[t_low, t_high]``."""
        pairs = []
        for t in probe_times(self.reference_timing, t_high, t_low, cuts=(self.tau1, self.tau2)):
            pair = self._stage_and_mask(t)
            if pair not in pairs:
                pairs.append(pair)
        return pairs

    def with_timed_references(self, conds: dict) -> dict:
        """``conds`` plus, per (stage, active-reference set) the timing can produce, its restricted conditioning.

        Without a timing (or while every reference is active) the stage keys are used as they are,
        so sampling is unchanged. Raises :class:`DLAInputError` when the timing names more
        references than any stage's conditioning holds, or when a conditioning's tokens are not as
        wide as the model reads (e.g. FLUX.2 conditioning on a FLUX.1 model).
        """
        for key, conditioning in conds.items():  # a width mismatch is one clear error here, not a matmul error later
            check_conditioning_fits_model(self.model_patcher, conditioning, f"The {key.replace('_', ' ')} conditioning")
        self._reference_counts = {
            stage: max(reference_count(conds.get(key)) for key in STAGE_COND_KEYS[stage]) for stage in ALL_STAGES
        }
        if self.reference_strength is not None:
            self.reference_strength.check_count(max(self._reference_counts.values()))
        if not self.reference_timing:
            return conds
        check_reference_count(self.reference_timing, max(self._reference_counts.values()))
        out = dict(conds)
        for stage, mask in self._probe_pairs(1.0, 0.0):
            for key in STAGE_COND_KEYS[stage]:
                if key in conds and not all(mask):
                    out[timed_key(key, mask)] = with_active_references(conds[key], mask)
        return out

    def _time(self, sigma) -> float:
        return normalised_time(self.model_patcher.get_model_object("model_sampling"), sigma)

    def _check_stages(self, stages: tuple[int, ...]) -> None:
        for stage in stages:
            has_positive, has_negative = self._available.get(stage, (False, False))
            if not has_positive:
                raise DLAInputError(
                    "The schedule reaches stage 3 (identity only) but the positive conditioning carries no 'MLLM off' "
                    "conditioning: connect the output of Dual Layer Aggregation as positive, or connect a "
                    "'stage3_conditioning', or set tau2 to 0 to skip stage 3."
                )
            if not has_negative and abs(self.cfg - 1.0) > 1e-9:
                raise DLAInputError(
                    f"cfg is {self.cfg} but there is no negative for stage {stage}: connect a negative conditioning "
                    "(e.g. ConditioningZeroOut of the positive) or set cfg to 1 (FLUX.1-dev uses 1)."
                )

    def _keys_of(self, stage: int, mask: tuple[bool, ...]) -> tuple[str, str]:
        return tuple(timed_key(key, mask) for key in STAGE_COND_KEYS[stage])

    def _pairs_with_references(self, pairs: list[tuple[int, tuple[bool, ...]]]) -> list[str]:
        """Labels of the distinct reference-carrying conditionings the calls in ``pairs`` use.

        Stages fed the very same conditioning (an unconnected stage reuses the previous one) with the
        same active references count once: the keys/values of their reference tokens are the same.
        """
        found, seen = [], set()
        for stage, mask in pairs:
            conds = [self.original_conds.get(key) or [] for key in self._keys_of(stage, mask)]
            if not any("reference_latents" in cond for group in conds for cond in group):
                continue
            source = (self._sources.get(stage, stage), mask)
            if source in seen:
                continue
            seen.add(source)
            found.append(str(stage) if all(mask) else f"{stage} ({describe_mask(mask)})")
        return found

    def _check_kv_cache(self, pairs: list[tuple[int, tuple[bool, ...]]]) -> None:
        with_references = self._pairs_with_references(pairs)
        if len(with_references) > 1 and reference_kv_caches(self.model_patcher):
            raise DLAInputError(KV_CACHE_MESSAGE.format(stages=" and ".join(with_references)))

    def sample(
        self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False, seed=None
    ):
        if sigmas.shape[-1] == 0:
            return latent_image
        times = [self._time(sigma) for sigma in sigmas.flatten()]
        stages = self.taus.stages_in_range(max(times), min(times))
        self._check_stages(stages)
        pairs = [pair for pair in self._probe_pairs(max(times), min(times)) if pair[0] in stages]
        self._check_kv_cache(pairs)
        logging.info(
            "DLA staged sampling (tau1=%s, tau2=%s): %s",
            self.tau1,
            self.tau2,
            describe_schedule(times, self.tau1, self.tau2),
        )
        if self.reference_timing:
            logging.info(
                "DLA reference timing %s: %s",
                ", ".join(map(str, self.reference_timing)),
                "; ".join(f"stage {stage}: {describe_mask(mask)}" for stage, mask in pairs),
            )
        if self.reference_strength is not None:
            logging.info("DLA reference strength %s", describe_strengths(self.reference_strength.strengths))
        keys = {key for stage in stages for key in STAGE_COND_KEYS[stage]}
        keys |= {key for pair in pairs for key in self._keys_of(*pair)}
        all_conds = self.original_conds
        self.original_conds = {key: value for key, value in all_conds.items() if key in keys}
        self._shown_stage, self._node_id = None, executing_node_id()
        try:
            return super().sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
        finally:
            self.original_conds = all_conds

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        t = self._time(timestep.flatten()[0])
        stage, mask = self._stage_and_mask(t)
        strengths = ()
        if self.reference_strength is not None:  # this call's strengths reach the attention patch
            strengths = self.reference_strength.for_call(mask, t)
            model_options = self.reference_strength.call_options(model_options, strengths)
            patch_calls = self.reference_strength.patch.calls
        if MODEL_CALL_OBSERVERS:
            for observer in MODEL_CALL_OBSERVERS:
                observer(ModelCall(self, t, stage, mask, strengths))
        if stage != self._shown_stage:  # progress text on the sampling node; never fails sampling
            self._shown_stage = stage
            show_text(f"stage {stage}/3: {STAGE_LABELS[stage]}", self._node_id)
        positive_key, negative_key = self._keys_of(stage, mask)
        positive = self.conds.get(positive_key)
        if positive is None:  # a sampler probed a time outside the sigma range it was given
            raise DLAInputError(
                f"The sampler evaluated t={t:.4f} ({STAGE_LABELS[stage]}), outside its own sigma range."
            )
        out = comfy.samplers.sampling_function(
            self.inner_model,
            x,
            timestep,
            self.conds.get(negative_key),
            positive,
            self.cfg,
            model_options=model_options,
            seed=seed,
        )
        if self.reference_strength is not None:  # a model whose attention never ran the patch: refuse, never ignore
            self.reference_strength.check_applied(patch_calls, strengths, self.model_patcher)
        return out


@dataclass(frozen=True)
class KSamplerSettings:
    """What a KSampler takes besides the model, the conditioning, cfg and the latent."""

    seed: int
    steps: int
    sampler_name: str
    scheduler: str
    denoise: float


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


def ksample_with_guider(guider, model, latent: dict, settings: KSamplerSettings) -> dict:
    """KSampler semantics (seeded noise with batch_index, denoise, noise_mask, previews) with any guider.

    The one execution function of every staged sampler node; a variant only builds its guider.
    """
    latent_image = fit_empty_latent(model, latent)
    noise = comfy.sample.prepare_noise(latent_image, settings.seed, latent.get("batch_index"))
    sigmas = comfy.samplers.KSampler(
        model,
        steps=settings.steps,
        device=model.load_device,
        sampler=settings.sampler_name,
        scheduler=settings.scheduler,
        denoise=settings.denoise,
        model_options=model.model_options,
    ).sigmas
    sampler = comfy.samplers.sampler_object(settings.sampler_name)
    callback = latent_preview.prepare_callback(model, settings.steps)
    samples = guider.sample(
        noise,
        latent_image,
        sampler,
        sigmas,
        denoise_mask=latent.get("noise_mask"),
        callback=callback,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
        seed=settings.seed,
    )
    return sampled_latent(latent, samples)


def tau_inputs(tau1_tooltip: str, tau2_tooltip: str) -> list:
    """The two stage thresholds every staged node takes (paper defaults), with the node's own tooltips."""
    return [
        io.Float.Input("tau1", default=DEFAULT_TAU1, min=0.0, max=1.0, step=0.01, tooltip=tau1_tooltip),
        io.Float.Input("tau2", default=DEFAULT_TAU2, min=0.0, max=1.0, step=0.01, tooltip=tau2_tooltip),
    ]


def stage_input_problem(values: dict) -> str | None:
    """For a staged node's ``validate_inputs``: what is wrong with tau1/tau2, the timing or the strength, or None.

    The same checks as :class:`StagedCFGGuider`'s constructor, run before the prompt; a linked
    (still unknown, None) input passes.
    """
    tau1, tau2 = values.get("tau1"), values.get("tau2")
    try:
        if tau1 is not None and tau2 is not None:
            validate_taus(tau1, tau2)
        parse_reference_timing(values.get("reference_timing") or "")
        parse_reference_strength(values.get("reference_strength") or "")
    except DLAInputError as error:
        return str(error)
    return None
