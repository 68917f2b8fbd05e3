"""Two-stage training of the DLA and a LoRA on FLUX.1-dev or FLUX.2 ([klein] 4B / 9B, [dev]).

The family is read from the transformer's config (:mod:`dla_core.train.family`); FLUX.2 needs diffusers >= 0.37.

``python -m dla_core.train`` / ``accelerate launch -m dla_core.train``.

Commands (see :mod:`dla_core.train.__main__`): ``validate``, ``prepare``, ``train`` (default), ``export``.
"""

from .config import DLATrainingConfig, config_from_dict, load_config
from .data import ManifestRecord, read_manifest

__all__ = ["DLATrainingConfig", "ManifestRecord", "config_from_dict", "load_config", "read_manifest"]
