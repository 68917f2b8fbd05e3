"""User-facing errors.

Every error the pack raises on bad input is a :class:`DLAInputError` (a ``ValueError``),
with a message written for the person at the canvas or the shell: what is wrong and how
to fix it. ComfyUI shows the message as a node error and keeps running.
"""


class DLAInputError(ValueError):
    """Bad input: a wrong file, folder, setting or tensor. The message says how to fix it."""


class DLACheckpointError(DLAInputError):
    """A DLA checkpoint is missing, corrupt, or built for another MLLM / DiT."""
