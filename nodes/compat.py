"""What the running ComfyUI can do, and the one line the pack gives when a model family is missing.

The pack supports ComfyUI 0.3.64 onwards. FLUX.2 [dev] arrived in ComfyUI 0.3.72 and FLUX.2
[klein] (Qwen3 text encoder) in 0.9.2; Qwen-Image-Edit-2511's ``index_timestep_zero`` placement
later than 0.3.64 too. On an older ComfyUI everything else keeps working; the FLUX.2 workflows
cannot load there (ComfyUI's own loaders lack the model types), and the pack says so once, at load;
its FLUX.2 nodes raise the same line when run there. Krea 2 (``comfy/ldm/krea2``) is in ComfyUI 0.33 and
not in 0.3.64; it gets its own line the same way.
"""

from __future__ import annotations

import logging

from ..dla_core.krea2 import TESTED_COMFYUI as KREA2_TESTED_COMFYUI

# From public release notes / issue threads (not ComfyUI's git history): FLUX.2 [dev] in 0.3.72, [klein]'s
# Qwen3 encoders in 0.9.2.
FLUX2_MIN_COMFYUI = "0.3.72"
KLEIN_MIN_COMFYUI = "0.9.2"


def comfyui_version() -> str:
    """The running ComfyUI's version (``"unknown"`` when it does not say)."""
    try:
        import comfyui_version as version_module  # ComfyUI's own top-level file

        return str(version_module.__version__)
    except Exception:  # noqa: BLE001 (a ComfyUI without the file)
        return "unknown"


def comfy_has_flux2() -> bool:
    """Whether this ComfyUI implements FLUX.2 (its latent format, detection and text encoders)."""
    import comfy.latent_formats

    return hasattr(comfy.latent_formats, "Flux2")


def flux2_missing_message() -> str:
    """The one line for a ComfyUI without FLUX.2: logged once at load, raised by every FLUX.2 node of the pack."""
    return (
        f"FLUX.2 needs ComfyUI >= {FLUX2_MIN_COMFYUI} (FLUX.2 [klein]: >= {KLEIN_MIN_COMFYUI}); this ComfyUI "
        f"({comfyui_version()}) has no FLUX.2. Update ComfyUI for the DLA pack's FLUX.2 nodes and workflows; "
        "FLUX.1, FLUX Kontext and Qwen-Image-Edit staging work here."
    )


def comfy_has_krea2() -> bool:
    """Whether this ComfyUI implements Krea 2 (its DiT ``comfy.ldm.krea2`` and text encoder, CLIPLoader type krea2)."""
    import importlib.util

    return importlib.util.find_spec("comfy.ldm.krea2") is not None


def krea2_missing_message() -> str:
    """The one line for a ComfyUI without Krea 2: logged once at load, raised by every Krea 2 node of the pack."""
    return (
        f"Krea 2 needs a newer ComfyUI (one with comfy/ldm/krea2 and CLIPLoader type krea2; tested: "
        f"{KREA2_TESTED_COMFYUI}); this ComfyUI is {comfyui_version()} and has no Krea 2. Update ComfyUI for the DLA "
        "pack's Krea 2 nodes and workflows; the other families' nodes work here."
    )


def log_missing_families() -> None:
    """Log one line per model family this ComfyUI lacks (called once when the pack loads)."""
    if not comfy_has_flux2():
        logging.warning(flux2_missing_message())
    if not comfy_has_krea2():
        logging.warning(krea2_missing_message())
