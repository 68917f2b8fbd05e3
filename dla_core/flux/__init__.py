"""FLUX.1 and FLUX.2 on the diffusers side: what the standalone pipeline and the trainer need to run them.

- :mod:`.references`: the token layout ComfyUI's FLUX uses (2x2 packing, position ids, reference
  latents as extra image tokens) and :func:`.references.flux_forward`, the one velocity call that
  inference and training share;
- :mod:`.sampling`: the sigma schedule, ``mu`` and the staged Euler loop of the standalone pipeline;
- :mod:`.weights`: BFL/ComfyUI <-> diffusers FLUX.1 weight names, LoRA conversion, and the loaders of
  FLUX transformer / VAE files and folders;
- :mod:`.flux2`: FLUX.2's token layout (as ComfyUI's FLUX.2 places text and references) and its velocity call;
- :mod:`.flux2_weights`: ComfyUI / BFL FLUX.2 keys -> diffusers ``Flux2Transformer2DModel``, configs, loaders;
- :mod:`.flux2_sampling`: FLUX.2's latent shape, VAE decode, schedule (ComfyUI's ``Flux2Scheduler``) and the
  staged loop's FLUX.2 model call, for the standalone pipeline.

FLUX.2 inside ComfyUI runs on ComfyUI's own model code: its DLA targets are in
:data:`dla_core.dla.TARGETS`, its text encoders are read by ``nodes/flux2_clip.py``.

Imports go one way: ``weights``, ``references`` and ``flux2`` use only ``dla_core.errors``;
``flux2_weights`` uses ``flux2`` and ``weights``; ``flux2_sampling`` uses ``flux2``; ``sampling`` uses
``references`` and ``dla_core.schedule``.
"""
