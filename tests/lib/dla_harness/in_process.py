"""ComfyUI in this process: started the way ``main.py`` starts it, prompts queued through its own executor.

* :func:`start_comfy_in_process` -- ComfyUI (``--cpu``) with a given ``--base-directory``; its built-in
  and custom nodes loaded by its own loader, so the pack is imported exactly as a user's ComfyUI imports it.
* :class:`ComfyRunner` -- queues API-format prompts through one ``execution.PromptExecutor`` (validation
  first, as the server does) and reads the cached outputs.
* :func:`pack_module` -- a module of the pack *as ComfyUI loaded it* (``pack_module("nodes.qwen_clip")``).
  ComfyUI imports a custom-node folder as a package named after its path, so the pack's modules are not
  importable by their short names (ComfyUI owns the top-level ``nodes``); classes and exceptions the
  running nodes use must come from that copy (``isinstance`` / ``pytest.raises`` compare classes).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dla_harness.tree import PACK_DIR_NAME, REPO_ROOT


# ----------------------------------------------------------------------------- the pack as ComfyUI loaded it
def pack_import_name(custom_nodes_dir: str) -> str:
    """The ``sys.modules`` name ComfyUI's custom-node loader gives the pack folder in ``custom_nodes_dir``.

    ``load_custom_node`` (nodes.py, ComfyUI 0.3.64 and 0.33) imports a directory entry
    ``module_path = os.path.join(<custom_nodes folder>, <entry>)`` as ``module_path.replace(".", "_x_")``,
    the custom_nodes folder being ``folder_paths.get_folder_paths("custom_nodes")``'s string as it is
    (``<abspath of --base-directory>/custom_nodes``): the symlink's path, not its target.
    """
    return os.path.join(custom_nodes_dir, PACK_DIR_NAME).replace(".", "_x_")


def loaded_pack_name() -> str:
    """Name of the pack's package in this process's ComfyUI: :func:`pack_import_name` of the custom_nodes folder
    (ComfyUI's own ``folder_paths``) that holds this repository under :data:`PACK_DIR_NAME`."""
    folder_paths = sys.modules.get("folder_paths")
    if folder_paths is None:
        raise RuntimeError("ComfyUI is not running in this process (start it first: the `comfy` fixture)")
    tried = []
    for folder in folder_paths.get_folder_paths("custom_nodes"):
        link = Path(folder) / PACK_DIR_NAME
        if link.is_dir() and link.resolve() == REPO_ROOT:
            name = pack_import_name(folder)
            if name in sys.modules:
                return name
            tried.append(f"{name} (not imported: did the pack fail to load? see ComfyUI's log)")
        else:
            tried.append(f"{link} (no link to {REPO_ROOT})")
    raise RuntimeError("ComfyUI in this process has not loaded the DLA pack; looked for " + "; ".join(tried))


def pack_module(submodule: str = ""):
    """A module of the pack as ComfyUI loaded it: ``pack_module("nodes.qwen_clip")``,
    ``pack_module("dla_core.errors")``; ``pack_module()`` is the pack's package itself."""
    package = loaded_pack_name()
    return importlib.import_module(f"{package}.{submodule}" if submodule else package)


# ----------------------------------------------------------------------------- starting ComfyUI
def foreign_comfy_reason(comfy_path: Path) -> str | None:
    """Why ComfyUI at ``comfy_path`` cannot start in this process, or None: another ``comfy``, or a ``nodes``
    that is not ComfyUI's (the pack's own ``nodes/`` imported by its short name from the repository root)."""
    for name in ("comfy", "nodes"):
        module = sys.modules.get(name)
        if module is not None and not str(getattr(module, "__file__", "")).startswith(str(comfy_path)):
            return f"another {name!r} ({getattr(module, '__file__', '?')}) is already imported in this process"
    return None


def start_comfy_in_process(comfy_path: Path, base_dir: Path) -> dict:
    """Set ComfyUI up in this process as ``main.py --cpu --base-directory base_dir`` does; loads every node.

    Returns ``{"execution": <ComfyUI's execution module>, "nodes": <ComfyUI's nodes module>}``.
    ComfyUI goes first on ``sys.path``: its top-level ``nodes``, ``server`` and ``utils`` win.
    """
    sys.path.insert(0, str(comfy_path))
    sys.argv = ["main.py", "--cpu", "--base-directory", str(base_dir), "--disable-api-nodes"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import folder_paths  # noqa: F401  (reads --base-directory at import)
    import utils.extra_config

    utils.extra_config.load_extra_path_config(str(Path(base_dir) / "extra_model_paths.yaml"))
    import execution

    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    return {"execution": execution, "nodes": nodes}


# ----------------------------------------------------------------------------- running prompts
class _ServerStub:
    """What ``execution.PromptExecutor`` calls on ``PromptServer`` for messaging; records the messages."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.messages: list[tuple[str, object]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def send_progress_text(self, text, node_id, sid=None):
        """ComfyUI's own ``PromptServer.send_progress_text`` (a binary TEXT message) through this stub."""
        from server import PromptServer

        PromptServer.send_progress_text(self, text, node_id, sid)

    def progress_texts(self) -> list[tuple[str, str]]:
        """(node id, text) of every progress text sent so far, decoded as the front end does."""
        import struct

        from server import BinaryEventTypes

        found = []
        for event, data in self.messages:
            if event == BinaryEventTypes.TEXT and isinstance(data, (bytes, bytearray)):
                (length,) = struct.unpack(">I", data[:4])
                found.append((data[4 : 4 + length].decode("utf-8"), data[4 + length :].decode("utf-8")))
        return found

    def queue_updated(self):
        pass


@dataclass
class PromptResult:
    """Outcome of one queued prompt."""

    prompt_id: str
    valid: bool
    success: bool
    node_errors: dict = field(default_factory=dict)
    validation_error: dict | None = None
    messages: list = field(default_factory=list)
    history: dict = field(default_factory=dict)

    @property
    def execution_error(self) -> dict | None:
        for event, data in self.messages:
            if event == "execution_error":
                return data
        return None

    @property
    def interrupted_node(self) -> str | None:
        """The node the person's Cancel stopped (its ``execution_interrupted`` message), else None."""
        for event, data in self.messages:
            if event == "execution_interrupted":
                return data["node_id"]
        return None

    @property
    def error_text(self) -> str:
        """Every error message of the prompt, for assertions on wording."""
        parts = [json.dumps(self.node_errors), json.dumps(self.validation_error or {})]
        if self.execution_error:
            parts.append(self.execution_error.get("exception_message", ""))
        return "\n".join(parts)


def make_executor(execution, server, cache: str = "CLASSIC", cache_args: dict | None = None):
    """``execution.PromptExecutor`` with cache type ``cache`` (a ``CacheType`` name), as ``main.py`` builds it.

    Newer ComfyUI reads ``cache_args`` (``lru``, ``ram``, ``ram_inactive`` in GB) on every prompt;
    0.3.64 takes ``lru`` only.
    """
    import inspect

    kwargs = {"cache_type": execution.CacheType[cache]}
    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:
        kwargs["cache_args"] = {"lru": 0, "ram": 0, "ram_inactive": 0, **(cache_args or {})}
    return execution.PromptExecutor(server, **kwargs)


class ComfyRunner:
    """Queues API-format prompts through one ``PromptExecutor`` (validation first, as the server does)."""

    def __init__(
        self, comfy_path: Path, base_dir: Path, modules: dict, cache: str = "CLASSIC", cache_args: dict | None = None
    ):
        self.comfy_path = comfy_path
        self.base_dir = base_dir
        self.execution = modules["execution"]
        self.nodes = modules["nodes"]
        self.modules = modules
        self.server = _ServerStub()
        self.executor = make_executor(self.execution, self.server, cache, cache_args)

    def run(self, prompt: dict) -> PromptResult:
        """Validate and execute ``prompt``; never raises for node errors (they are in the result)."""
        prompt_id = str(uuid.uuid4())
        valid, error, outputs, node_errors = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            return PromptResult(prompt_id, False, False, node_errors=node_errors, validation_error=error)
        self.executor.execute(prompt, prompt_id, {}, outputs)
        return PromptResult(
            prompt_id,
            True,
            self.executor.success,
            node_errors=node_errors,
            messages=list(self.executor.status_messages),
            history=self.executor.history_result,
        )

    def output(self, node_id: str, index: int = 0):
        """Cached output ``index`` of node ``node_id`` from the last prompts (first list item)."""
        entry = self.executor.caches.outputs.get(str(node_id))
        if asyncio.iscoroutine(entry):  # newer ComfyUI's caches are async
            entry = asyncio.run(entry)
        if entry is None:
            raise KeyError(f"node {node_id} has no cached output")
        outputs = entry.outputs if hasattr(entry, "outputs") else entry
        return outputs[index][0]

    def reset_cache(self):
        self.executor.reset()
