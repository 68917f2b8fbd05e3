"""Progress the person can see: ComfyUI's progress bar on a node and its progress text, and its interrupt.

* :func:`node_progress` gives a ``progress(done, total)`` callback for ``dla_core`` work: it first checks
  ComfyUI's interrupt (Cancel stops the work there, with ComfyUI's own ``InterruptProcessingException``),
  then moves ``comfy.utils.ProgressBar`` of the executing node.
* :func:`interrupt_between` checks ComfyUI's interrupt before each of some modules runs (forward pre-hooks on
  the decoder layers of ComfyUI's own text encoders, whose forward the pack does not drive itself).
* :func:`show_text` puts a line of text on the executing node (``PromptServer.send_progress_text``, ComfyUI
  0.3.64 onwards). Progress text is a nicety: where this ComfyUI (or a test harness) has no server or no such
  method, nothing is shown and nothing fails.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterable

import comfy.model_management
import comfy.utils


def executing_node_id() -> str | None:
    """Id of the node ComfyUI is executing now, or None (outside a prompt)."""
    try:
        from comfy_execution.utils import get_executing_context  # ComfyUI 0.3.64+

        context = get_executing_context()
        if context is not None:
            return str(context.node_id)
    except Exception:  # noqa: BLE001 (an older or unusual ComfyUI)
        pass
    try:
        from server import PromptServer

        node_id = getattr(getattr(PromptServer, "instance", None), "last_node_id", None)
        return None if node_id is None else str(node_id)
    except Exception:  # noqa: BLE001
        return None


def show_text(text: str, node_id: str | None = None) -> bool:
    """Show ``text`` on node ``node_id`` (default: the executing node); True if it was sent. Never raises."""
    try:
        node_id = node_id if node_id is not None else executing_node_id()
        if node_id is None:
            return False
        from server import PromptServer

        instance = getattr(PromptServer, "instance", None)
        send = getattr(instance, "send_progress_text", None)
        if send is None:
            return False
        send(text, node_id)
        return True
    except Exception as exc:  # noqa: BLE001 (progress text must never fail the work)
        logging.debug("DLA: progress text %r not shown: %s", text, exc)
        return False


def check_interrupt() -> None:
    """Raise ComfyUI's ``InterruptProcessingException`` if the person pressed Cancel."""
    comfy.model_management.throw_exception_if_processing_interrupted()


@contextlib.contextmanager
def interrupt_between(modules: Iterable):
    """Inside the block, every forward of each of ``modules`` (torch modules) first checks ComfyUI's interrupt.

    Cancel then stops e.g. a text encoder's forward at the next decoder layer with ComfyUI's own
    ``InterruptProcessingException``. The hooks are removed on leaving the block, also after an exception.
    """
    handles = [module.register_forward_pre_hook(lambda _module, _args: check_interrupt()) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def node_progress():
    """A ``progress(done, total)`` callback: interrupt check, then the executing node's progress bar."""
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        check_interrupt()
        if bar is None:
            bar = comfy.utils.ProgressBar(total)
        bar.update_absolute(done, total)

    return progress
