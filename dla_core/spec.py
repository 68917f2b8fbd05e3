"""What an HF-format MLLM folder holds, read from its ``config.json`` alone.

Used by ``init-dla`` and by checkpoint validation, so that neither needs to load the
(possibly 8B) model just to know its layer count and width.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import DLAInputError

# model_type in config.json -> the family name the pack uses everywhere.
SUPPORTED_FAMILIES = {
    "internvl": "internvl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "mistral3": "mistral3",  # Mistral-Small-3.x (Mistral3ForConditionalGeneration): FLUX.2 [dev]'s text encoder
}


@dataclass(frozen=True)
class MLLMSpec:
    """Shape of an MLLM's hidden states as the DLA sees them."""

    family: str  # one of SUPPORTED_FAMILIES' values
    num_layers: int  # hidden states captured: embedding output + each decoder layer
    width: int  # hidden size of the language model
    name: str = ""  # folder name, for messages

    def describe(self) -> str:
        return f"{self.num_layers} layers of width {self.width} ({self.family})"


def _text_config(config: dict) -> dict:
    # InternVL and Qwen3-VL nest the language model config; Qwen2.5-VL has it at the
    # top level in older transformers and nested ("text_config") in newer ones.
    text = config.get("text_config") or config.get("llm_config")
    if isinstance(text, dict) and "hidden_size" in text:
        return text
    return config


def read_mllm_spec(folder: str | Path) -> MLLMSpec:
    """Read family, layer count and width from ``folder/config.json`` without loading weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DLAInputError(
            f"MLLM folder '{folder}' does not exist. Put a Hugging Face-format model folder "
            f"(config.json, weights, tokenizer, processor) under ComfyUI/models/mllm/ and pick it by name."
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise DLAInputError(
            f"MLLM folder '{folder}' has no config.json: it is not a Hugging Face-format model folder. "
            "Download the transformers-format repository (for InternVL3 use the '-hf' variant, e.g. InternVL3-8B-hf)."
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DLAInputError(f"Cannot read '{config_file}': {exc}. Re-download the model's config.json.") from exc
    model_type = config.get("model_type", "")
    if model_type not in SUPPORTED_FAMILIES:
        raise DLAInputError(
            f"MLLM folder '{folder.name}' holds model_type '{model_type}', which this pack does not support. "
            f"Supported: {', '.join(sorted(SUPPORTED_FAMILIES))} (InternVL3 must be the transformers-native '-hf' "
            "format)."
        )
    text = _text_config(config)
    try:
        num_decoder_layers = int(text["num_hidden_layers"])
        width = int(text["hidden_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DLAInputError(
            f"config.json of '{folder.name}' lacks the language model's num_hidden_layers/hidden_size."
        ) from exc
    return MLLMSpec(
        family=SUPPORTED_FAMILIES[model_type], num_layers=num_decoder_layers + 1, width=width, name=folder.name
    )
