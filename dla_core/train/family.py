"""Which DiT family a training run is for (FLUX.1 or FLUX.2), and what differs between them.

The family is read from the transformer's ``config.json`` (``_class_name``; for a single ComfyUI-layout
file, from its keys) or set with ``model.family``. Everything family-specific the trainer needs sits
here: the checks of the DLA against the transformer (before any weight loads), the LoRA target names,
the default reference placement and guidance, and the velocity call (:func:`velocity_tokens`), which is
``dla_core.flux.references.flux_velocity_tokens`` for FLUX.1 and ``dla_core.flux.flux2.flux2_velocity_tokens``
for FLUX.2, the same calls inference makes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..dla import TARGETS, DLAConfig
from ..errors import DLAInputError
from ..flux import flux2
from ..flux.flux2_weights import FLUX2_ATTENTION_TARGETS, read_transformer_config
from ..flux.references import DEFAULT_REFERENCE_METHOD, flux_velocity_tokens, pack_latents
from .config import FLUX_ATTENTION_TARGETS

FLUX2_TARGETS = tuple(name for name in TARGETS if name.startswith("flux2"))
_CLASS_FAMILY = {"FluxTransformer2DModel": "flux", flux2.FLUX2_TRANSFORMER_CLASS: "flux2"}


def family_of_config(transformer_config: dict | None) -> str | None:
    """``"flux"`` / ``"flux2"`` from a diffusers transformer config, or None when it says neither."""
    if not transformer_config:
        return None
    family = _CLASS_FAMILY.get(transformer_config.get("_class_name", ""))
    if family is None and "axes_dims_rope" in transformer_config:
        family = "flux2" if len(transformer_config["axes_dims_rope"]) == 4 else "flux"
    return family


def resolve_family(config) -> tuple[str, dict | None]:
    """The run's family (``model.family`` or the transformer's config; FLUX.1 when neither says) and that config."""
    transformer_config = read_transformer_config(config.model.flux) if config.model.flux else None
    detected = family_of_config(transformer_config)
    chosen = config.model.family
    if chosen is not None and detected is not None and chosen != detected:
        raise DLAInputError(
            f"model.family is '{chosen}' but the transformer '{config.model.flux}' is {detected.upper()} "
            f"({transformer_config.get('_class_name', '?')}). Remove model.family or point model.flux at a "
            f"{chosen.upper()} transformer."
        )
    return chosen or detected or "flux", transformer_config


def check_family_runtime(family: str) -> None:
    """FLUX.2 needs a newer diffusers: say which, before anything loads."""
    if family == "flux2":
        flux2.require_flux2_diffusers()


def check_dla_fits_transformer(family: str, transformer_config: dict | None, dla: DLAConfig, where: str) -> None:
    """Raise :class:`DLAInputError` unless the DLA's target is the transformer's (reads configs only)."""
    target = TARGETS[dla.target]
    if family == "flux2":
        if dla.target not in FLUX2_TARGETS:
            raise DLAInputError(
                f"The DLA is for target '{dla.target}' ({target.description}) but the transformer {where} is FLUX.2. "
                f"Create the DLA for FLUX.2: `python -m dla_core init-dla --target flux2_klein` (or "
                f"{', '.join(t for t in FLUX2_TARGETS if t != 'flux2_klein')})."
            )
        if transformer_config is None:
            return
        width = transformer_config.get("joint_attention_dim")
        guided = bool(transformer_config.get("guidance_embeds", True))
        if guided != target.distilled_guidance:
            kind = "[dev] (with guidance embedding)" if guided else "[klein] (no guidance embedding)"
            fitting = [n for n in FLUX2_TARGETS if TARGETS[n].distilled_guidance == guided]
            raise DLAInputError(
                f"The DLA is for '{dla.target}' ({target.description}) but the transformer {where} is FLUX.2 {kind}. "
                f"Use a DLA made for it (`init-dla --target {' / '.join(fitting)}`) or the transformer the DLA is for."
            )
        if width != dla.context_width:
            raise DLAInputError(
                f"The FLUX.2 transformer {where} takes {width}-wide context tokens but the DLA outputs "
                f"{dla.context_width} ({dla.target}). Use the DLA made for this transformer."
            )
        return
    if dla.target in FLUX2_TARGETS:
        raise DLAInputError(
            f"The DLA is for FLUX.2 ('{dla.target}') but the transformer {where} is FLUX.1. Point model.flux at "
            "the FLUX.2 transformer, or create a FLUX.1 DLA with `init-dla --target flux`."
        )
    if transformer_config is not None and (
        transformer_config.get("joint_attention_dim") != dla.context_width
        or transformer_config.get("pooled_projection_dim") != dla.pooled_width
    ):
        raise DLAInputError(
            f"The FLUX transformer takes context {transformer_config.get('joint_attention_dim')} / pooled "
            f"{transformer_config.get('pooled_projection_dim')} but the DLA outputs {dla.context_width} / "
            f"{dla.pooled_width}. Create the DLA with target 'flux'."
        )


def default_reference_method(family: str, configured: str | None) -> str:
    """The placement of identity tokens: FLUX.2 only places by ``index`` (its ComfyUI default)."""
    if family == "flux2":
        return flux2.check_flux2_reference_method(configured)
    return configured or DEFAULT_REFERENCE_METHOD


def check_family_settings(family: str, config) -> None:
    """Settings that do not carry over to FLUX.2, refused before anything loads (reference placement included)."""
    default_reference_method(family, config.train.reference_method)
    if family == "flux2" and config.train.timestep_shift == "resolution":
        raise DLAInputError(
            "train.timestep_shift 'resolution' is FLUX.1's shift (mu from its 2x2-packed token count); FLUX.2's own "
            "depends on the sampling steps and does not apply to training. Use 'fixed' (shift 3.0, as "
            "configs/train_flux2_klein.yaml) or 'none'."
        )


def default_lora_targets(family: str) -> tuple[str, ...]:
    return FLUX2_ATTENTION_TARGETS if family == "flux2" else FLUX_ATTENTION_TARGETS


def lora_target_names(transformer: torch.nn.Module, targets) -> list[str]:
    """Full names of the ``nn.Linear`` modules whose name ends with one of ``targets`` (peft-style suffixes).

    FLUX.2's double blocks hold a ``ModuleList`` named ``attn.to_out`` where its single blocks hold the
    ``Linear`` of that name; naming modules in full keeps the LoRA on the Linears only.
    """
    names = []
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith(f".{t}") for t in targets):
            names.append(name)
    return names


def load_transformer(family: str, path: str | Path, dtype: torch.dtype):
    """The frozen base transformer of the run."""
    if family == "flux2":
        from ..flux.flux2_weights import load_flux2_transformer

        return load_flux2_transformer(path, dtype=dtype)
    from ..flux.weights import load_flux_transformer

    return load_flux_transformer(path, dtype=dtype)


def pack_target(family: str, latents: torch.Tensor) -> torch.Tensor:
    """Model-space latents -> the tokens the velocity is compared with."""
    return flux2.pack_flux2_latents(latents) if family == "flux2" else pack_latents(latents)


def text_length_key(family: str, valid_tokens: int) -> int:
    """Samples with the same key can share one call (FLUX.2 pads each to 512 tokens; FLUX.1 masks)."""
    return flux2.flux2_text_length(valid_tokens) if family == "flux2" else 0


def velocity_tokens(
    family: str,
    transformer,
    latents,
    sigmas,
    context,
    context_mask,
    pooled,
    guidance: float,
    references,
    reference_method: str,
):
    """The family's velocity call, as inference makes it; [batch, tokens, channels]."""
    if family == "flux2":
        return flux2.flux2_velocity_tokens(
            transformer, latents, sigmas, context, guidance, references, text_mask=context_mask
        )
    return flux_velocity_tokens(
        transformer, latents, sigmas, context, pooled, guidance, references, reference_method, text_mask=context_mask
    )
