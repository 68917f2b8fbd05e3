"""One cache of tiny model files and folders, shared by test sessions, CI rows and benches.

A tiny model that does not depend on the test is built once into ``$DLA_TINY_MODELS_CACHE`` and
reused by every later run (``.ci/run`` sets it to ``~/.cache/dla-ci/tiny-models``); tests link it
into their own temporary trees. Without the variable, :func:`cached_path` builds into the test's
fallback folder, as before.

Layout: ``$DLA_TINY_MODELS_CACHE/trees-<digest>/<name>``. The digest hashes the sources the tiny
builders run (:data:`SOURCES`: ``tests/lib/dla_tiny``, ``tests/lib/dla_harness/tree.py``,
``tests/integration/tiny_*.py``, ``dla_core/selftest_models.py``, ``dla_core/checkpoint.py``) and
:data:`TREE_FORMAT`, so a change to a builder builds afresh by itself; a change of init-dla or of the DLA
module's weights (the tiny tree holds DLA files) bumps :data:`TREE_FORMAT`. Bounded: after a build, only
the :data:`KEEP` most recently used ``trees-*`` folders are kept (a folder used in the last
:data:`IN_USE_S` seconds is never removed: a run of another checkout may be reading it). Every entry
is built under a temporary name and renamed into place, so a run killed mid-build never leaves a half
file or folder that a later run would use.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[3]
# What the tiny files and trees are built from. Not the rest of dla_core: the pack's code changes all the time
# and the trees only need its DLA file format, which changes rarely -- bump TREE_FORMAT when it does.
SOURCES = (
    "tests/lib/dla_tiny/**/*.py",
    "tests/lib/dla_harness/tree.py",
    "tests/integration/tiny_*.py",
    "dla_core/selftest_models.py",
    "dla_core/checkpoint.py",  # save_dla / load_dla: the DLA files in the tiny tree
)
TREE_FORMAT = "5"  # bump when init-dla or the DLA module's weights change (the tiny tree holds DLA files)
KEEP = 1  # plus any used within IN_USE_S (a run of another checkout may still read it); one digest: ~10 GiB
IN_USE_S = 3600.0
ENV = "DLA_TINY_MODELS_CACHE"


@lru_cache(maxsize=1)
def builders_digest() -> str:
    """12 hex digits of sha256 over the tiny builders' sources (path and bytes of each, sorted)."""
    digest = hashlib.sha256(TREE_FORMAT.encode() + b"\0")
    files = sorted({path for pattern in SOURCES for path in REPO_ROOT.glob(pattern) if "__pycache__" not in path.parts})
    for path in files:
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def cache_root() -> Path | None:
    """``$DLA_TINY_MODELS_CACHE`` as a path, or None when unset."""
    value = os.environ.get(ENV)
    return Path(value) if value else None


def _touch(folder: Path) -> None:
    (folder / ".last-used").write_text(f"{time.time():.0f}\n")


def _last_used(folder: Path) -> float:
    try:
        return (folder / ".last-used").stat().st_mtime
    except OSError:
        return folder.stat().st_mtime


def prune(root: Path, keep: int = KEEP, in_use_s: float = IN_USE_S) -> list[Path]:
    """Remove all but the ``keep`` most recently used ``trees-*`` folders (never one used within ``in_use_s``),
    and half-built entries older than ``in_use_s``; returns what was removed."""
    folders = sorted((p for p in root.glob("trees-*") if p.is_dir()), key=_last_used, reverse=True)
    removed = []
    for folder in folders[keep:]:
        if time.time() - _last_used(folder) > in_use_s:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    for partial in root.glob("trees-*/.building-*"):  # left by a run killed mid-build
        if time.time() - partial.stat().st_mtime > in_use_s:
            shutil.rmtree(partial, ignore_errors=True) if partial.is_dir() else partial.unlink(missing_ok=True)
            removed.append(partial)
    return removed


def cached_path(
    name: str, build: Callable[[Path], object], fallback_dir: str | Path, root: str | Path | None = None
) -> Path:
    """The file or folder ``name`` made by ``build(path)``: from the cache (``root``, default
    ``$DLA_TINY_MODELS_CACHE``) when there is one, built there once; else built into ``fallback_dir / name``.

    ``build`` gets the path to write (a file path or a folder path; it creates what it needs).
    """
    root = Path(root) if root is not None else cache_root()
    if root is None:
        path = Path(fallback_dir) / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            build(path)
        return path
    folder = root / f"trees-{builders_digest()}"
    folder.mkdir(parents=True, exist_ok=True)
    _touch(folder)
    path = folder / name
    if path.exists():
        return path
    stem, suffix = Path(name).stem, Path(name).suffix  # the suffix kept: some writers look at it
    partial = folder / f".building-{uuid.uuid4().hex}-{stem}.partial{suffix}"
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        build(partial)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():  # another process finished first: keep its copy
            shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
        else:
            os.replace(partial, path)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True) if partial.is_dir() else partial.unlink()
    prune(root)
    return path


def cached_build(
    builder: Callable[..., object], fallback_dir: str | Path, suffix: str = ".safetensors", **kwargs
) -> Path:
    """``builder(path, **kwargs)`` once (:func:`cached_path`), named after the builder and its arguments.

    E.g. ``cached_build(build_tiny_qwen_image_dit, tmp, seed=0)``: every test asking for the same
    builder with the same arguments gets the same file.
    """
    key = hashlib.sha256(repr(sorted(kwargs.items())).encode()).hexdigest()[:10]
    return cached_path(f"{builder.__name__}-{key}{suffix}", lambda path: builder(path, **kwargs), fallback_dir)


def link_tree(files: dict[str, Path], dest: str | Path) -> Path:
    """A folder ``dest`` with a symlink ``dest/<relative path>`` -> each cached file or folder; returns ``dest``."""
    dest = Path(dest)
    for relative, target in files.items():
        link = dest / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink() and not link.exists():
            link.symlink_to(Path(target).resolve(), target_is_directory=Path(target).is_dir())
    return dest
