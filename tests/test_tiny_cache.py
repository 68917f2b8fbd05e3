"""The shared cache of tiny models (tests/lib/dla_tiny/cache.py): built once, never half-built, bounded.

Every later run of the suite reads its big tiny models from this cache instead of writing them
afresh into the temp folder, so what it promises is pinned here with real files.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
from safetensors.torch import load_file

from dla_tiny import cache
from dla_tiny.files import write_safetensors


def _builder(calls: list):
    def build_tiny_weights(path, seed=0, width=4):
        calls.append(path)
        generator = torch.Generator().manual_seed(seed)
        return write_safetensors(path, {"w": torch.randn(width, width, generator=generator)})

    return build_tiny_weights


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV, str(root))
    return root


def test_a_cached_file_is_built_once_and_shared(cache_dir, tmp_path):
    calls = []
    build = _builder(calls)
    first = cache.cached_build(build, tmp_path / "a", seed=3)
    second = cache.cached_build(build, tmp_path / "b", seed=3)
    other = cache.cached_build(build, tmp_path / "a", seed=4)
    assert first == second and first != other and len(calls) == 2
    assert first.parent == cache_dir / f"trees-{cache.builders_digest()}"
    weights = load_file(str(first))["w"]
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights, torch.randn(4, 4, generator=torch.Generator().manual_seed(3)))
    assert not (tmp_path / "a").exists()  # the fallback folder is only for runs without a cache


def test_without_a_cache_the_file_is_built_in_the_fallback_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.ENV, raising=False)
    calls = []
    path = cache.cached_build(_builder(calls), tmp_path / "fallback", seed=0)
    assert path.parent == tmp_path / "fallback" and path.is_file() and len(calls) == 1


def test_a_build_that_dies_leaves_nothing_a_later_run_would_use(cache_dir, tmp_path):
    def dies_half_way(path):
        path.write_bytes(b"half a file")
        raise KeyboardInterrupt  # as a Ctrl-C or a kill would leave it

    with pytest.raises(KeyboardInterrupt):
        cache.cached_path("weights.safetensors", dies_half_way, tmp_path)
    folder = cache_dir / f"trees-{cache.builders_digest()}"
    assert not (folder / "weights.safetensors").exists()
    assert not list(folder.glob(".building-*"))
    calls = []
    path = cache.cached_path("weights.safetensors", _builder(calls), tmp_path)
    assert len(calls) == 1 and torch.isfinite(load_file(str(path))["w"]).all()


def test_a_folder_entry_is_built_under_a_temporary_name_and_moved_into_place(cache_dir, tmp_path):
    seen = []

    def build_folder(path):
        seen.append(path)
        path.mkdir()
        (path / "config.json").write_text("{}")

    path = cache.cached_path("tiny-mllm", build_folder, tmp_path)
    assert seen[0].name.startswith(".building-") and not seen[0].exists()
    assert (path / "config.json").read_text() == "{}"


def test_prune_keeps_the_most_recently_used_and_anything_in_use(cache_dir):
    now = time.time()
    ages = {"aaaaaaaaaaaa": 10 * 3600, "bbbbbbbbbbbb": 5 * 3600, "cccccccccccc": 600, "dddddddddddd": 2 * 3600}
    for digest, age in ages.items():
        folder = cache_dir / f"trees-{digest}"
        folder.mkdir(parents=True)
        (folder / ".last-used").write_text("")
        os.utime(folder / ".last-used", (now - age, now - age))
    stale = cache_dir / "trees-dddddddddddd" / ".building-0-x.partial.safetensors"
    stale.write_bytes(b"")
    os.utime(stale, (now - 7200, now - 7200))
    removed = cache.prune(cache_dir, keep=1, in_use_s=3600)
    left = sorted(p.name for p in cache_dir.glob("trees-*"))
    # c: the most recent; a, b, d older than an hour -> removed (d's stale partial with it)
    assert left == ["trees-cccccccccccc"]
    assert not stale.exists() and cache_dir / "trees-aaaaaaaaaaaa" in removed
    (cache_dir / "trees-eeeeeeeeeeee").mkdir()
    (cache_dir / "trees-eeeeeeeeeeee" / ".last-used").write_text("")
    cache.prune(cache_dir, keep=1, in_use_s=3600)
    # both used within the hour: a run of another checkout may be reading the older one
    assert sorted(p.name for p in cache_dir.glob("trees-*")) == ["trees-cccccccccccc", "trees-eeeeeeeeeeee"]


def test_the_digest_covers_the_builders_sources():
    digest = cache.builders_digest()
    assert len(digest) == 12 and int(digest, 16) >= 0
    covered = {
        p.relative_to(cache.REPO_ROOT).as_posix() for pattern in cache.SOURCES for p in cache.REPO_ROOT.glob(pattern)
    }
    assert {
        "tests/lib/dla_tiny/qwen_image.py",
        "tests/lib/dla_harness/tree.py",
        "tests/integration/tiny_flux2.py",
    } <= covered
    assert "dla_core/selftest_models.py" in covered
