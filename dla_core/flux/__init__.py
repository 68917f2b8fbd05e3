"""FLUX.1 on the diffusers side: what the standalone pipeline and the trainer need to run it.

- :mod:`.references`: the token layout ComfyUI's FLUX uses (2x2 packing, position ids, reference
  latents as extra image tokens) and :func:`.references.flux_forward`, the one velocity call that
  inference and training share;
- :mod:`.sampling`: the sigma schedule, ``mu`` and the staged Euler loop of the standalone pipeline;
- :mod:`.weights`: BFL/ComfyUI <-> diffusers weight names, LoRA conversion, and the loaders of
  FLUX transformer / VAE files and folders.

FLUX.2 runs only inside ComfyUI, on ComfyUI's own model code: its DLA targets are in
:data:`dla_core.dla.TARGETS`, its text encoders are read by ``nodes/flux2_clip.py``.

Imports go one way: ``weights`` and ``references`` use only ``dla_core.errors``; ``sampling``
uses ``references`` and ``dla_core.schedule``.
"""
