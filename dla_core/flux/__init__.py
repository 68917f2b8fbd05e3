"""Everything FLUX-specific, in one place (FLUX.2 joins here).

- :mod:`.references`: the token layout ComfyUI's FLUX uses (2x2 packing, position ids, reference
  latents as extra image tokens) and :func:`.references.flux_forward`, the one velocity call that
  inference and training share;
- :mod:`.sampling`: the sigma schedule, ``mu`` and the staged Euler loop of the standalone pipeline;
- :mod:`.checkpoint`: BFL/ComfyUI <-> diffusers weight names, LoRA conversion, and the loaders of
  FLUX transformer / VAE files and folders.

Imports go one way: ``checkpoint`` and ``references`` use only ``dla_core.errors``; ``sampling``
uses ``references`` and ``dla_core.schedule``.
"""
