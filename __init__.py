"""ComfyUI entry point of the DLA subject pack: registers the nodes, nothing else.

The import of the node modules is deferred to :func:`comfy_entrypoint` so that importing
this file outside ComfyUI (packaging tools, test discovery) needs no ComfyUI.
"""

# ComfyUI serves this folder at /extensions/<pack folder>/; the front end's node help panel reads
# web/docs/<node id>.md from there (one page per node). It holds no JavaScript.
WEB_DIRECTORY = "./web"


def comfy_entrypoint():
    """Called by ComfyUI's custom-node loader; returns the pack's one ``ComfyExtension``."""
    from .nodes import DLASubjectExtension
    from .nodes.compat import log_missing_families
    from .nodes.model_folders import register_model_folders

    register_model_folders()
    log_missing_families()
    return DLASubjectExtension()
