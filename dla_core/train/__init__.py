"""Two-stage training of the DLA and the FLUX LoRA.

``python -m dla_core.train`` / ``accelerate launch -m dla_core.train``.

Commands (see :mod:`dla_core.train.__main__`): ``validate``, ``prepare``, ``train`` (default), ``export``.
"""

from .config import DLATrainingConfig, config_from_dict, load_config
from .data import ManifestRecord, read_manifest

__all__ = ["DLATrainingConfig", "ManifestRecord", "config_from_dict", "load_config", "read_manifest"]
