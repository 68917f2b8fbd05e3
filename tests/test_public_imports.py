"""The pack uses public transformers APIs only, and its hand-written byte-level table is GPT-2's.

transformers moves and removes its private modules between major versions (transformers 5
dropped ``transformers.models.gpt2.tokenization_gpt2.bytes_to_unicode``), so no file of the
repository may import ``transformers.<submodule>``; ``from transformers import X`` is fine.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_DIRS = {"node_modules", "__pycache__", "venv", "test-artifacts"}


def _skipped(part: str) -> bool:
    """Not the pack's own code: dependencies, caches and hidden folders (.git, .venv, local scratch copies)."""
    return part in SKIPPED_DIRS or part.startswith(".")


def _python_files() -> list[Path]:
    """Every .py file of the repository (the pack, its tests and bench scripts)."""
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if not _skipped(name)]  # prune: never descend into them
        found += [Path(folder) / name for name in files if name.endswith(".py")]
    return sorted(found)


def _transformers_submodule_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every ``import transformers.x`` / ``from transformers.x import ...`` in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.startswith("transformers.")]
    return sorted(found)


def test_the_scan_sees_the_pack():
    files = {path.relative_to(ROOT).as_posix() for path in _python_files()}
    assert {"dla_core/mllm/loading.py", "dla_core/selftest_models.py", "tests/test_eval.py", "__init__.py"} <= files
    assert not any(_skipped(part) for name in files for part in Path(name).parts[:-1])
    assert any(name.startswith("nodes/") for name in files) and any(name.startswith("bench/") for name in files)


def test_the_scan_catches_private_imports():
    source = (
        "import transformers\nfrom transformers import AutoProcessor\n"
        "def f():\n    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode\n"
        "import transformers.utils as u\nfrom . import transformers_helpers\n"
    )
    assert _transformers_submodule_imports(source) == [
        (4, "transformers.models.gpt2.tokenization_gpt2"),
        (5, "transformers.utils"),
    ]


def test_no_file_imports_a_transformers_submodule():
    found = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in _python_files()
        for line, module in _transformers_submodule_imports(path.read_text(encoding="utf-8"))
    ]
    assert not found, "private transformers module paths imported (use `from transformers import ...`):\n" + "\n".join(
        found
    )


def test_byte_table_is_gpt2s_byte_to_unicode_mapping():
    from dla_core.selftest_models import bytes_to_unicode

    table = bytes_to_unicode()
    assert len(table) == 256 and sorted(table) == list(range(256))
    # GPT-2's insertion order (printable bytes first, then the others): tiny vocabularies number tokens by it
    assert list(table)[:3] == [ord("!"), ord('"'), ord("#")] and list(table)[188:191] == [0, 1, 2]
    assert len(set(table.values())) == 256  # bijective
    assert all(len(char) == 1 for char in table.values())
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    assert len(printable) == 188
    assert all(table[byte] == chr(byte) for byte in printable)
    # the 68 other bytes take 256, 257, ... in byte order
    others = [byte for byte in range(256) if byte not in printable]
    assert [table[byte] for byte in others] == [chr(256 + n) for n in range(68)]
    assert table[32] == "Ġ" and table[10] == "Ċ" and table[9] == "ĉ" and table[0] == "Ā"
    assert table[127] == "ġ" and table[173] == "Ń"
    assert table[ord("A")] == "A" and table[ord("~")] == "~"
    # every byte string round-trips through the table
    inverse = {char: byte for byte, char in table.items()}
    data = bytes(range(256))
    assert bytes(inverse[table[byte]] for byte in data) == data
