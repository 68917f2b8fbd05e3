"""Dual Layer Aggregation (DLA): MLLM hidden states of every layer -> DiT conditioning.

Two :class:`~dla_core.lap.LayerwiseAttentionPooling` modules with separate weights read the
MLLM's text-token positions and image-token positions; their per-token outputs go through
one shared projection to the DiT's context width (FLUX: 4096, the T5 slot) and are fused by
concatenation along the token axis, per sample:

    [valid text tokens (in order) | valid image tokens (in order) | zero padding]

(``fuse="concat_image_first"`` puts image tokens first; ``fuse="sequence"`` keeps every valid
token at its rank in the MLLM's own order, text tokens through the text LAP and image tokens
through the image LAP, which is how Qwen-Image reads Qwen2.5-VL's states, so the identity
initialisation reproduces native Qwen-Image conditioning). Samples are right-padded with zeros
to the longest one in the batch and ``token_mask`` marks the valid positions. Positions that
are in neither content mask (padding, chat-template tokens) are never gathered, so they
cannot influence any output.

Besides the tokens FLUX needs a pooled vector (the CLIP-L slot, 768 wide). The DLA derives it
with a learned projection from the masked mean of its own output tokens:
``pooled = Linear(LayerNorm(mean over valid tokens))``. Targets without a pooled input
(Qwen-Image) have ``pooled_width=0`` and get ``None``.

"MLLM off" (stage 3 of the sampler and training's condition dropout) is one learned null
sequence of ``null_length`` tokens (default 16) plus a learned null pooled vector, stored in
the checkpoint. Both start at zero, i.e. exactly what ComfyUI's ConditioningZeroOut gives a
FLUX user today, and training moves them. 16 tokens: long enough to carry a learned "no
instruction" signal, short enough to cost nothing in the DiT's joint attention.

:func:`strip_padding` trims that right padding for a DiT that cannot mask it (FLUX).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from . import krea2
from .errors import DLACheckpointError, DLAInputError
from .features import MLLMFeatures
from .lap import POOL_MODES, LayerwiseAttentionPooling
from .spec import MLLMSpec

DLA_CONFIG_VERSION = 1

FUSE_MODES = ("concat_text_first", "concat_image_first", "sequence")
INIT_MODES = ("random", "identity")
LAYER_ATTENTION_CHUNK = 256  # tokens per LAP call in DualLayerAggregation.layer_attention


@dataclass(frozen=True)
class NativeEncoder:
    """A DiT's own text encoder when it is an LLM whose layers the DLA can read (FLUX.2).

    ``layers`` are hidden-state numbers in the pack's convention (0 = token embeddings, k = the
    input of decoder layer k = the output of decoder layer k-1, the last = the final norm's
    output), which is also ComfyUI's ``layer=[...]`` convention for these encoders. The DiT's
    conditioning token is those layers' states concatenated, in this order.
    """

    family: str  # MLLMFeatures.family of this encoder
    num_layers: int  # hidden states: embeddings + every decoder layer
    width: int
    layers: tuple[int, ...]
    name: str
    # MLLM families whose language model has this encoder's width and depth, so the native layer choice reads
    # them too (the MLLM that encodes text and reference jointly: Qwen3-VL-4B for [klein] 4B, Qwen3-VL-8B for 9B).
    joint_families: tuple[str, ...] = ()
    joint_name: str = ""  # the joint MLLM meant, for messages

    def spec(self) -> MLLMSpec:
        return MLLMSpec(self.family, self.num_layers, self.width, name=self.name)

    @property
    def reader_families(self) -> tuple[str, ...]:
        """Families an identity DLA for this target may read: the encoder's own and the joint MLLMs'."""
        return (self.family, *self.joint_families)


@dataclass(frozen=True)
class TargetSpec:
    """What a target DiT expects from its text encoder slot."""

    context_width: int  # width of each conditioning token
    pooled_width: int  # width of the pooled vector; 0 = the DiT takes none
    description: str
    distilled_guidance: bool = True  # the DiT reads a "guidance" value from its conditioning (FLUX-dev/Kontext)
    native: Optional[NativeEncoder] = None  # the DiT's own LLM text encoder, for identity init and checks
    # The DiT fuses the native layers itself (Krea 2): a DLA hands it one slot per layer (LAP pool "stack",
    # one output projection shared by the slots: ``DLAConfig.output_slots``) instead of a pooled vector.
    layer_slots: bool = False


# FLUX.2's text-encoder layers (hidden-state numbers, 0 = embeddings), pinned here and nowhere else: BFL's
# reference code, ComfyUI (comfy/text_encoders/flux.py) and diffusers' pipelines use these; diffusers' own
# [klein] training script once defaulted to [10, 20, 30] for [klein], which is [dev]'s choice, not [klein]'s.
FLUX2_DEV_TEXT_LAYERS = (10, 20, 30)
FLUX2_KLEIN_TEXT_LAYERS = (9, 18, 27)

TARGETS: dict[str, TargetSpec] = {
    "flux": TargetSpec(4096, 768, "FLUX.1 (T5-XXL token slot 4096 wide, CLIP-L pooled 768)"),
    krea2.TARGET: TargetSpec(
        krea2.CONTEXT_WIDTH,
        0,
        krea2.TARGET_DESCRIPTION,
        distilled_guidance=False,
        native=NativeEncoder(krea2.FAMILY, krea2.NUM_STATES, krea2.WIDTH, krea2.TAP_LAYERS, krea2.TEXT_ENCODER_NAME),
        layer_slots=True,
    ),
    "qwen_image": TargetSpec(
        3584, 0, "Qwen-Image (Qwen2.5-VL-7B token slot 3584 wide, no pooled vector)", distilled_guidance=False
    ),
    "flux2": TargetSpec(
        15360,
        0,
        "FLUX.2 [dev] (Mistral-Small-3 24B layers 10, 20, 30 stacked per token: 3 x 5120, no pooled vector)",
        native=NativeEncoder(
            "mistral3",
            41,
            5120,
            FLUX2_DEV_TEXT_LAYERS,
            "Mistral-Small-3 24B (FLUX.2 [dev] text encoder)",
            joint_name="Mistral-Small-3.x (its vision tower reads the reference)",
        ),
    ),
    "flux2_klein": TargetSpec(
        7680,
        0,
        "FLUX.2 [klein] 4B (Qwen3-4B layers 9, 18, 27 stacked per token: 3 x 2560, no pooled vector)",
        distilled_guidance=False,
        native=NativeEncoder(
            "qwen3",
            37,
            2560,
            FLUX2_KLEIN_TEXT_LAYERS,
            "Qwen3-4B (FLUX.2 [klein] 4B text encoder)",
            joint_families=("qwen3_vl",),
            joint_name="Qwen3-VL-4B (36 layers of width 2560, as Qwen3-4B)",
        ),
    ),
    "flux2_klein_9b": TargetSpec(
        12288,
        0,
        "FLUX.2 [klein] 9B (Qwen3-8B layers 9, 18, 27 stacked per token: 3 x 4096, no pooled vector)",
        distilled_guidance=False,
        native=NativeEncoder(
            "qwen3",
            37,
            4096,
            FLUX2_KLEIN_TEXT_LAYERS,
            "Qwen3-8B (FLUX.2 [klein] 9B text encoder)",
            joint_families=("qwen3_vl",),
            joint_name="Qwen3-VL-8B (36 layers of width 4096, as Qwen3-8B)",
        ),
    ),
}


def targets_for_features(family: str, width: int) -> list[str]:
    """Targets whose own text encoder gives features of this family and width (for hints in messages)."""
    return sorted(
        name
        for name, spec in TARGETS.items()
        if spec.native is not None and family in spec.native.reader_families and spec.native.width == width
    )


def target_spec(target: str) -> TargetSpec:
    """Look a target DiT up in :data:`TARGETS`; unknown names raise :class:`DLAInputError`."""
    try:
        return TARGETS[target]
    except KeyError:
        raise DLAInputError(f"Unknown target '{target}'. Supported targets: {', '.join(sorted(TARGETS))}.") from None


@dataclass
class DLAConfig:
    """Everything needed to rebuild a :class:`DualLayerAggregation`; stored as JSON in checkpoints.

    ``num_layers`` and ``mllm_width`` describe the MLLM (embedding output + decoder layers);
    ``layer_indices`` selects which of its layers the LAPs read (``None`` = all).
    """

    mllm_family: str
    num_layers: int
    mllm_width: int
    mllm_name: str = ""
    lap_width: int = 1024
    lap_heads: int = 16
    lap_blocks: int = 2
    lap_mlp_hidden: int = 4096
    lap_pool: str = "flatten"
    lap_input_norm: bool = True
    layer_indices: Optional[list[int]] = None
    target: str = "flux"
    context_width: int = 4096
    pooled_width: int = 768
    fuse: str = "concat_text_first"
    null_length: int = 16
    init: str = "random"
    identity_layer: int = -1
    # Width of each LAP's per-token output (0 = lap_width). Stacking k layers needs k * lap_width.
    lap_out_width: int = 0
    # Identity init: LAP layer positions whose states are stacked side by side in the LAP output
    # (None = [identity_layer] alone). FLUX.2's text encoders stack three layers per token.
    identity_layers: Optional[list[int]] = None
    # The output projection maps each of this many equal slots of the LAP output alone (one shared
    # lap_output_width/slots -> context_width/slots map): Krea 2's 12 layer slots. 1 = one map over all.
    output_slots: int = 1
    version: int = DLA_CONFIG_VERSION
    extra: dict = field(default_factory=dict)  # free-form: training recipe, notes

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`DLAInputError` on an inconsistent config."""
        if self.version != DLA_CONFIG_VERSION:
            raise DLACheckpointError(
                f"DLA config version {self.version} is not supported by this pack (it reads version "
                f"{DLA_CONFIG_VERSION}). "
                "Update the pack, or re-create the checkpoint with `python -m dla_core init-dla`."
            )
        positive = (
            "num_layers",
            "mllm_width",
            "lap_width",
            "lap_heads",
            "lap_mlp_hidden",
            "context_width",
            "null_length",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise DLAInputError(f"DLA config '{name}' must be a positive integer, got {value!r}.")
        if not isinstance(self.lap_blocks, int) or self.lap_blocks < 0:
            raise DLAInputError(f"DLA config 'lap_blocks' must be 0 or more, got {self.lap_blocks!r}.")
        if not isinstance(self.pooled_width, int) or self.pooled_width < 0:
            raise DLAInputError(f"DLA config 'pooled_width' must be 0 (none) or positive, got {self.pooled_width!r}.")
        if self.lap_width % self.lap_heads:
            raise DLAInputError(
                f"lap_width {self.lap_width} is not divisible by lap_heads {self.lap_heads}; choose heads that divide "
                "it."
            )
        for name, value, allowed in (
            ("fuse", self.fuse, FUSE_MODES),
            ("init", self.init, INIT_MODES),
            ("lap_pool", self.lap_pool, POOL_MODES),
        ):
            if value not in allowed:
                raise DLAInputError(f"DLA config '{name}' is '{value}'; choose one of {', '.join(allowed)}.")
        target_spec(self.target)
        if self.layer_indices is not None:
            indices = list(self.layer_indices)
            if (
                not indices
                or any(not isinstance(i, int) or not 0 <= i < self.num_layers for i in indices)
                or len(set(indices)) != len(indices)
            ):
                raise DLAInputError(
                    f"DLA layer_indices {self.layer_indices} must be distinct layer numbers in "
                    f"0..{self.num_layers - 1}."
                )
            self.layer_indices = indices
        if not -self.lap_layers <= self.identity_layer < self.lap_layers:
            raise DLAInputError(
                f"identity_layer {self.identity_layer} is out of range: the DLA reads {self.lap_layers} layers "
                f"(use 0..{self.lap_layers - 1}, or -1 for the last)."
            )
        if not isinstance(self.lap_out_width, int) or self.lap_out_width < 0:
            raise DLAInputError(
                f"DLA config 'lap_out_width' must be 0 (= lap_width) or positive, got {self.lap_out_width!r}."
            )
        if self.identity_layers is not None:
            stack = list(self.identity_layers)
            if (
                not stack
                or any(not isinstance(i, int) or not -self.lap_layers <= i < self.lap_layers for i in stack)
                or len({i % self.lap_layers for i in stack}) != len(stack)
            ):
                raise DLAInputError(
                    f"DLA identity_layers {self.identity_layers} must be distinct positions in the {self.lap_layers} "
                    f"layers the DLA reads (0..{self.lap_layers - 1})."
                )
            self.identity_layers = stack
        if self.init == "identity" and self.lap_output_width != len(self.identity_stack) * self.lap_width:
            raise DLAInputError(
                f"Identity initialisation stacks {len(self.identity_stack)} layer(s) of width {self.lap_width}, so "
                f"the LAP output must be {len(self.identity_stack) * self.lap_width} wide (lap_out_width), got "
                f"{self.lap_output_width}."
            )
        if self.init == "identity" and len(self.identity_stack) > 1 and self.lap_pool == "weighted":
            raise DLAInputError(
                "Identity initialisation that stacks several layers needs lap_pool 'flatten' or 'stack' (the "
                "'weighted' pool sums layers into one)."
            )
        if (
            not isinstance(self.output_slots, int)
            or self.output_slots < 1
            or self.lap_output_width % self.output_slots
            or self.context_width % self.output_slots
        ):
            raise DLAInputError(
                f"DLA config 'output_slots' must be a positive integer dividing the LAP output width "
                f"({self.lap_output_width}) and the context width ({self.context_width}), got {self.output_slots!r}."
            )
        if self.init == "identity" and (self.lap_width != self.mllm_width or self.lap_input_norm):
            raise DLAInputError(
                "Identity initialisation passes layer states through unchanged, so it needs lap_width equal to the "
                "MLLM width "
                f"({self.mllm_width}, got {self.lap_width}) and lap_input_norm off."
            )

    @property
    def used_layers(self) -> list[int]:
        """MLLM layer numbers the LAPs read, in order."""
        return list(self.layer_indices) if self.layer_indices is not None else list(range(self.num_layers))

    @property
    def lap_layers(self) -> int:
        return len(self.layer_indices) if self.layer_indices is not None else self.num_layers

    @property
    def lap_output_width(self) -> int:
        """Width of each LAP's per-token output (the output projection's input)."""
        return self.lap_out_width or self.lap_width

    @property
    def identity_stack(self) -> list[int]:
        """LAP layer positions the identity init stacks, in order."""
        return list(self.identity_layers) if self.identity_layers is not None else [self.identity_layer]

    def mllm_spec(self) -> MLLMSpec:
        """The MLLM this DLA was built for (``describe()`` names it in messages)."""
        return MLLMSpec(self.mllm_family, self.num_layers, self.mllm_width)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (round-trips through :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DLAConfig":
        """Rebuild from :meth:`to_dict` output; unknown keys raise :class:`DLACheckpointError`."""
        if not isinstance(data, dict):
            raise DLACheckpointError(f"DLA config must be a JSON object, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DLACheckpointError(
                f"DLA config has unknown fields {unknown}: it was written by a newer version of the pack. Update the "
                "pack."
            )
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise DLACheckpointError(f"DLA config lacks required fields {missing}.")
        try:
            return cls(**data)
        except TypeError as exc:
            raise DLACheckpointError(f"DLA config is malformed: {exc}.") from exc


@dataclass
class DLAConditioning:
    """DLA output in the DiT's text-encoder format.

    ``tokens``: [batch, tokens, context_width], zero where ``token_mask`` is False.
    ``token_mask``: [batch, tokens] bool, valid positions (each sample's valid tokens come first).
    ``pooled``: [batch, pooled_width], or None for targets without a pooled vector.
    """

    tokens: torch.Tensor
    token_mask: torch.Tensor
    pooled: Optional[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def to(self, device=None, dtype=None) -> "DLAConditioning":
        """Copy with tokens/pooled moved and cast; the mask only moves."""
        return DLAConditioning(
            tokens=self.tokens.to(device=device, dtype=dtype),
            token_mask=self.token_mask.to(device=device),
            pooled=None if self.pooled is None else self.pooled.to(device=device, dtype=dtype),
        )


def _mismatch_message(config: DLAConfig, family: str, num_layers: int, width: int, source: str) -> str:
    message = (
        f"DLA checkpoint expects {config.mllm_spec().describe()}; {source} gives {num_layers} of width {width} "
        f"({family}): load the DLA trained for this MLLM or run `python -m dla_core init-dla` for it"
    )
    fitting = targets_for_features(family, width)
    if fitting and config.target not in fitting:
        # e.g. FLUX.2 [klein]'s Qwen3 features into a FLUX.2 [dev] DLA: name both sides and the fix.
        message += (
            f". This DLA is for target '{config.target}' ({TARGETS[config.target].description}); these features "
            f"come from the text encoder of {' / '.join(repr(name) for name in fitting)}: use a DLA made with "
            f"`init-dla --target {fitting[0]}`, or encode with the text encoder of the model this DLA is for"
        )
    return message


def check_mllm_compatible(
    config: DLAConfig,
    mllm: MLLMSpec,
    held_layers: Sequence[int] | None = None,
    source: str = "the connected MLLM",
    fix_missing: str = "Encode again keeping all layers (or at least these).",
) -> None:
    """Raise unless the hidden states of ``mllm`` fit the DLA of ``config``: the one check of inference and training.

    Family, layer count and width must be the DLA's (:class:`DLACheckpointError` naming both sides and the fix;
    ``source`` names where the MLLM's states come from). With ``held_layers`` (the layer indices features or a
    feature cache hold) every layer the DLA reads must be among them (:class:`DLAInputError`, ``fix_missing``).
    Reads only the config: a trainer checks a checkpoint's config before any weight loads.
    """
    if (mllm.family, mllm.num_layers, mllm.width) != (config.mllm_family, config.num_layers, config.mllm_width):
        raise DLACheckpointError(_mismatch_message(config, mllm.family, mllm.num_layers, mllm.width, source))
    if held_layers is None:
        return
    held = list(held_layers)
    missing = [layer for layer in config.used_layers if layer not in held]
    if missing:
        raise DLAInputError(
            f"The DLA reads MLLM layers {config.used_layers} but the features hold only layers {held} "
            f"(missing {missing}). {fix_missing}"
        )


class DualLayerAggregation(nn.Module):
    """Two LAPs (text / image positions) + shared projection + pooled projection + learned null."""

    def __init__(self, config: DLAConfig):
        super().__init__()
        config.validate()
        self.config = config
        lap_kwargs = dict(
            num_layers=config.lap_layers,
            input_width=config.mllm_width,
            lap_width=config.lap_width,
            out_width=config.lap_output_width,
            heads=config.lap_heads,
            blocks=config.lap_blocks,
            mlp_hidden=config.lap_mlp_hidden,
            pool=config.lap_pool,
            input_norm=config.lap_input_norm,
        )
        self.lap_text = LayerwiseAttentionPooling(**lap_kwargs)
        self.lap_image = LayerwiseAttentionPooling(**lap_kwargs)
        slots = config.output_slots
        self.output_proj = nn.Linear(config.lap_output_width // slots, config.context_width // slots)
        if config.pooled_width:
            self.pooled_norm = nn.LayerNorm(config.context_width)
            self.pooled_proj = nn.Linear(config.context_width, config.pooled_width)
            self.null_pooled = nn.Parameter(torch.zeros(config.pooled_width))  # [pooled_width]
        else:
            self.pooled_norm = self.pooled_proj = None
            self.register_parameter("null_pooled", None)
        self.null_tokens = nn.Parameter(
            torch.zeros(config.null_length, config.context_width)
        )  # [null_length, context_width]
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise per ``config.init`` (call under ``torch.manual_seed`` for determinism)."""
        for lap in (self.lap_text, self.lap_image):
            lap.reset_parameters()
        nn.init.normal_(self.output_proj.weight, std=0.02)
        nn.init.zeros_(self.output_proj.bias)
        if self.pooled_proj is not None:
            nn.init.normal_(self.pooled_proj.weight, std=0.02)
            nn.init.zeros_(self.pooled_proj.bias)
            nn.init.zeros_(self.null_pooled)
        nn.init.zeros_(self.null_tokens)
        if self.config.init == "identity":
            self._init_identity()

    @torch.no_grad()
    def _init_identity(self) -> None:
        # Both LAPs return the selected layer(s), side by side in identity_stack order; the output
        # projection copies that into the first min(LAP output, context_width) output dims and
        # writes 0 elsewhere. With FLUX (4096) and a 3584-wide MLLM the last 512 dims are 0; a
        # wider MLLM would be truncated. FLUX.2: layers 10, 20, 30 of Mistral-3 -> 3 x 5120 = 15360.
        for lap in (self.lap_text, self.lap_image):
            lap.init_identity_stack(self.config.identity_stack)
        self.output_proj.weight.zero_()
        self.output_proj.bias.zero_()
        shared = min(self.output_proj.in_features, self.output_proj.out_features)
        self.output_proj.weight[:shared, :shared] = torch.eye(shared, dtype=self.output_proj.weight.dtype)

    # ------------------------------------------------------------------ compatibility
    def check_compatible(self, features_or_spec: MLLMFeatures | MLLMSpec) -> None:
        """Raise :class:`DLACheckpointError` unless the MLLM matches the one this DLA was built for.

        Compares family, layer count and width; for features also checks that every layer
        the DLA reads is present (features may hold a subset of layers). See :func:`check_mllm_compatible`.
        """
        if isinstance(features_or_spec, MLLMSpec):
            check_mllm_compatible(self.config, features_or_spec)
        elif isinstance(features_or_spec, MLLMFeatures):
            features = features_or_spec
            check_mllm_compatible(self.config, MLLMSpec(features.family, features.num_layers, features.width))
            self._feature_layer_positions(features)
        else:
            raise DLAInputError(
                f"check_compatible takes MLLMFeatures or an MLLMSpec, got {type(features_or_spec).__name__}."
            )

    def _feature_layer_positions(self, features: MLLMFeatures) -> list[int]:
        # Where each layer the DLA reads sits in features.hidden_states' layer axis.
        held = [i % features.num_layers for i in features.layer_indices]
        if len(held) != features.hidden_states.shape[1]:
            raise DLAInputError(
                f"MLLM features list {len(held)} layer indices but hold {features.hidden_states.shape[1]} layers; "
                "the encoder output is inconsistent."
            )
        check_mllm_compatible(
            self.config, MLLMSpec(features.family, features.num_layers, features.width), held_layers=held
        )
        position = {layer: pos for pos, layer in enumerate(held)}
        return [position[layer] for layer in self.config.used_layers]

    # ------------------------------------------------------------------ forward
    def _content_inputs(self, features: MLLMFeatures) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(hidden [batch, layers read, tokens, width], text_mask, image_mask)``, masks inside the attention mask."""
        self.check_compatible(features)
        positions = self._feature_layer_positions(features)
        hidden = features.hidden_states  # [batch, layers, tokens, width]
        if positions != list(range(hidden.shape[1])):
            hidden = hidden[:, positions]
        param = self.output_proj.weight
        hidden = hidden.to(device=param.device, dtype=param.dtype)
        valid = features.attention_mask.to(device=param.device, dtype=torch.bool)
        text_mask = features.text_mask.to(device=param.device, dtype=torch.bool) & valid  # [batch, tokens]
        image_mask = features.image_mask.to(device=param.device, dtype=torch.bool) & valid
        if (text_mask & image_mask).any():
            raise DLAInputError(
                "MLLM features mark some tokens as both text and image; the encoder output is inconsistent."
            )
        return hidden, text_mask, image_mask

    @torch.no_grad()
    def layer_attention(
        self, features: MLLMFeatures, check_interrupt: Callable[[], None] | None = None
    ) -> dict[str, torch.Tensor]:
        """Per content token, how much of its LAP output comes from each MLLM layer the DLA reads.

        ``{"text": [text tokens, layers read], "image": [image tokens, layers read]}``: one row per valid
        token of that kind over the whole batch (padding and chat-template tokens are never read, as in
        :meth:`forward`), each row summing to 1; columns follow ``config.used_layers``. See
        :meth:`~dla_core.lap.LayerwiseAttentionPooling.layer_attention` for what a share is.
        ``check_interrupt``: optional, called before each LAP block of each chunk of tokens (as in :meth:`forward`).
        """
        hidden, text_mask, image_mask = self._content_inputs(features)
        per_token = hidden.permute(0, 2, 1, 3)  # [batch, tokens, layers, width]
        shares = {}
        for kind, mask, lap in (("text", text_mask, self.lap_text), ("image", image_mask, self.lap_image)):
            items = per_token[mask]  # [tokens of this kind, layers, width]
            # In chunks: the read-out holds [items, layers, out_width], 0.8 GB for 2000 tokens at 29 x 3584.
            chunks = [lap.layer_attention(chunk, check_interrupt)[0] for chunk in items.split(LAYER_ATTENTION_CHUNK)]
            shares[kind] = torch.cat(chunks) if chunks else items.new_zeros(0, items.shape[1])
        return shares

    def forward(self, features: MLLMFeatures, check_interrupt: Callable[[], None] | None = None) -> DLAConditioning:
        """Aggregate all layers of ``features`` into conditioning tokens + pooled vector.

        ``check_interrupt``: optional, called before each LAP block and each pooling map (see
        :meth:`~dla_core.lap.LayerwiseAttentionPooling.forward`); whatever it raises stops the forward there.
        The ComfyUI node passes ComfyUI's interrupt check, so Cancel stops a long aggregation promptly.
        """
        hidden, text_mask, image_mask = self._content_inputs(features)
        batch, _, tokens, _ = hidden.shape
        counts = text_mask.sum(1) + image_mask.sum(1)  # [batch]
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            raise DLAInputError(
                f"Sample(s) {empty} of the MLLM features hold no text and no image tokens; give each a prompt or a "
                "reference image."
            )
        per_token = hidden.permute(0, 2, 1, 3)  # [batch, tokens, layers, width]
        out_len = int(counts.max())
        out = hidden.new_zeros(batch, out_len, self.config.context_width)  # [batch, out_len, context_width]
        for mask, dest, lap in self._destinations(text_mask, image_mask):
            if not mask.any():
                continue
            items = per_token[mask]  # [items, layers, width]
            values = self.project(lap(items, check_interrupt))  # [items, context_width]
            rows = mask.nonzero()[:, 0]
            out[rows, dest[mask]] = values.to(out.dtype)
        token_mask = torch.arange(out_len, device=out.device)[None, :] < counts[:, None]  # [batch, out_len]
        return DLAConditioning(tokens=out, token_mask=token_mask, pooled=self._pool(out, token_mask))

    def project(self, lap_output: torch.Tensor) -> torch.Tensor:
        """LAP output ``[items, lap_output_width]`` -> tokens ``[items, context_width]`` (per slot when
        ``config.output_slots`` > 1: Krea 2's 12 layer slots share one map)."""
        slots = self.config.output_slots
        if slots == 1:
            return self.output_proj(lap_output)
        per_slot = lap_output.reshape(lap_output.shape[0], slots, -1)  # [items, slots, slot width]
        return self.output_proj(per_slot).reshape(lap_output.shape[0], -1)

    def _destinations(self, text_mask: torch.Tensor, image_mask: torch.Tensor) -> list:
        """``(mask, destination slot per token, LAP)`` for text and image tokens, per ``config.fuse``.

        Masks are [batch, tokens]; destinations hold, at each masked position, the output slot.
        """
        if self.config.fuse == "sequence":
            rank = (text_mask | image_mask).cumsum(1) - 1  # rank among all valid tokens, original order
            return [(text_mask, rank, self.lap_text), (image_mask, rank, self.lap_image)]
        if self.config.fuse == "concat_text_first":
            (first_mask, first_lap), (second_mask, second_lap) = (
                (text_mask, self.lap_text),
                (image_mask, self.lap_image),
            )
        else:
            (first_mask, first_lap), (second_mask, second_lap) = (
                (image_mask, self.lap_image),
                (text_mask, self.lap_text),
            )
        # Rank among its own kind; the second kind starts after the first kind's count.
        first_dest = first_mask.cumsum(1) - 1
        second_dest = second_mask.cumsum(1) - 1 + first_mask.sum(1, keepdim=True)
        return [(first_mask, first_dest, first_lap), (second_mask, second_dest, second_lap)]

    def _pool(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> Optional[torch.Tensor]:
        if self.pooled_proj is None:
            return None
        weights = token_mask.to(tokens.dtype)[..., None]  # [batch, tokens, 1]
        mean = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # [batch, context_width]
        return self.pooled_proj(self.pooled_norm(mean))

    def null_conditioning(self, batch_size: int = 1) -> DLAConditioning:
        """The learned "MLLM off" conditioning (sampler stage 3, training's condition dropout)."""
        if batch_size < 1:
            raise DLAInputError(f"batch_size must be at least 1, got {batch_size}.")
        tokens = self.null_tokens[None].expand(batch_size, -1, -1)  # [batch, null_length, context_width]
        mask = torch.ones(batch_size, self.config.null_length, dtype=torch.bool, device=tokens.device)
        pooled = None if self.null_pooled is None else self.null_pooled[None].expand(batch_size, -1)
        return DLAConditioning(tokens=tokens, token_mask=mask, pooled=pooled)

    def drop_to_null(self, conditioning: DLAConditioning, drop: torch.Tensor) -> DLAConditioning:
        """Replace the samples where ``drop`` ([batch] bool) is True by :meth:`null_conditioning`.

        Training's condition dropout goes through here, so a dropped sample sees exactly the
        "MLLM off" tokens the sampler's stage 3 uses. Sequences are right-padded with zeros to
        ``max(tokens, null_length)``; ``token_mask`` marks what is valid.
        """
        drop = drop.to(device=conditioning.tokens.device, dtype=torch.bool).flatten()
        batch, tokens, width = conditioning.tokens.shape
        if drop.shape[0] != batch:
            raise DLAInputError(f"drop mask has {drop.shape[0]} entries for a batch of {batch}.")
        null = self.null_conditioning(batch)
        length = max(tokens, self.config.null_length)
        out = conditioning.tokens.new_zeros(batch, length, width)  # [batch, length, context_width]
        mask = torch.zeros(batch, length, dtype=torch.bool, device=out.device)
        keep = ~drop
        out[keep, :tokens] = conditioning.tokens[keep]
        mask[keep, :tokens] = conditioning.token_mask[keep].to(out.device)
        out[drop, : self.config.null_length] = null.tokens[drop].to(out.dtype)
        mask[drop, : self.config.null_length] = True
        pooled = None
        if conditioning.pooled is not None:
            pooled = torch.where(drop[:, None], null.pooled.to(conditioning.pooled.dtype), conditioning.pooled)
        return DLAConditioning(tokens=out, token_mask=mask, pooled=pooled)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def strip_padding(tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Drop right padding from DLA tokens: ``[batch, tokens, width]`` -> ``[batch, valid, width]``.

    FLUX's joint attention has no text-token mask, so padded positions would be attended to
    like real tokens; every sample of a batch must therefore have the same number of valid
    tokens. Raises :class:`DLAInputError` when they differ.
    """
    counts = token_mask.sum(dim=1)  # [batch]
    if counts.numel() == 0:
        raise DLAInputError("The DLA produced an empty batch; encode at least one prompt.")
    if bool((counts != counts[0]).any()):
        raise DLAInputError(
            f"The samples of this MLLM batch give different token counts ({counts.tolist()}); FLUX cannot mask padded "
            "text tokens, so they cannot share one conditioning. Encode each prompt/reference set with its own "
            "MLLM Joint Encode node (or use references of the same size) and sample them separately."
        )
    valid = int(counts[0])
    expected = torch.arange(tokens.shape[1], device=token_mask.device)[None, :] < valid
    if not bool((token_mask == expected).all()):
        raise DLAInputError("DLA token mask is not right-padded; the DLA output is inconsistent.")
    return tokens[:, :valid]
