"""The pack's model folders in ComfyUI's ``folder_paths``: ``mllm`` (also ``LLM``) and ``dla``.

Paths that ``extra_model_paths.yaml`` (loaded before custom nodes) added under these names
are kept: the default folders are appended after them, never put in their place.
"""

from __future__ import annotations

import os

import folder_paths

from ..dla_core.errors import DLAInputError

MLLM_FOLDER = "mllm"
LLM_FOLDER = "LLM"  # where other packs keep language models; MLLM folders there are listed too
DLA_FOLDER = "dla"
DLA_EXTENSIONS = {".safetensors"}
FOLDER_MARKER = "folder"  # same extension marker ComfyUI uses for folder-type model entries


def _register(name: str, default_dirs: list[str], extensions: set[str]) -> None:
    entry = folder_paths.folder_names_and_paths.get(name)
    if entry is None:
        folder_paths.folder_names_and_paths[name] = (list(default_dirs), set(extensions))
        return
    paths, existing_extensions = entry
    for directory in default_dirs:
        if directory not in paths:
            paths.append(directory)
    if isinstance(existing_extensions, set):
        existing_extensions.update(extensions)


def register_model_folders() -> None:
    """Add ``models/mllm`` + ``models/LLM`` (as ``mllm``) and ``models/dla`` (as ``dla``); idempotent."""
    models_dir = folder_paths.models_dir
    _register(MLLM_FOLDER, [os.path.join(models_dir, "mllm"), os.path.join(models_dir, "LLM")], {FOLDER_MARKER})
    _register(DLA_FOLDER, [os.path.join(models_dir, "dla")], DLA_EXTENSIONS)


def mllm_search_dirs() -> list[str]:
    """Every directory MLLM folders are looked for in, in priority order, without duplicates."""
    dirs: list[str] = []
    for name in (MLLM_FOLDER, LLM_FOLDER):
        if name in folder_paths.folder_names_and_paths:
            for directory in folder_paths.get_folder_paths(name):
                if directory not in dirs:
                    dirs.append(directory)
    return dirs


def list_mllm_folders() -> list[str]:
    """Names of the sub-folders (with a ``config.json``) of every MLLM directory; sorted, first one wins."""
    names: set[str] = set()
    for directory in mllm_search_dirs():
        if not os.path.isdir(directory):
            continue
        for entry in os.listdir(directory):
            if os.path.isfile(os.path.join(directory, entry, "config.json")):
                names.add(entry)
    return sorted(names)


def resolve_mllm_folder(name: str) -> str:
    """Full path of the MLLM folder ``name``; a clear error naming the searched folders if absent."""
    if not name or os.path.basename(os.path.normpath(name)) != name:
        raise DLAInputError(f"'{name}' is not an MLLM folder name; pick one from the list.")
    for directory in mllm_search_dirs():
        candidate = os.path.join(directory, name)
        if os.path.isdir(candidate):
            return candidate
    searched = ", ".join(mllm_search_dirs()) or "(none registered)"
    raise DLAInputError(
        f"MLLM folder '{name}' was not found in {searched}. Put the Hugging Face-format model folder "
        f"(config.json, safetensors weights, tokenizer and processor files) into ComfyUI/models/mllm/{name}, "
        "then refresh the page (R) and pick it."
    )


def list_dla_files() -> list[str]:
    """DLA checkpoint file names under every registered ``dla`` directory."""
    return folder_paths.get_filename_list(DLA_FOLDER)


def resolve_dla_file(name: str) -> str:
    """Full path of the DLA checkpoint ``name``; a clear error naming the searched folders if absent."""
    path = folder_paths.get_full_path(DLA_FOLDER, name) if name else None
    if path is None:
        searched = ", ".join(folder_paths.get_folder_paths(DLA_FOLDER))
        raise DLAInputError(
            f"DLA checkpoint '{name}' was not found in {searched}. Put the .safetensors file into ComfyUI/models/dla/ "
            "(or create an untrained one with `python -m dla_core init-dla --mllm <folder> --target flux --out "
            "ComfyUI/models/dla/<name>.safetensors`), then refresh the page (R)."
        )
    return path
