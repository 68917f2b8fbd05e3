"""The README's node table lists exactly the node ids the pack registers in ComfyUI (its own loader).

tests/test_docs.py checks the table against the ``node_id="..."`` declarations without a ComfyUI; this
checks it against ComfyUI's ``NODE_CLASS_MAPPINGS`` after ComfyUI loaded the pack as a custom node.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_node_ids() -> set[str]:
    section = README.read_text(encoding="utf-8").split("\n## Nodes", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\|\s*`(DLA\w+)`\s*\|", section, re.M))


def test_readme_node_table_is_what_the_pack_registers(comfy):
    registered = {
        node_id
        for node_id, cls in comfy.nodes.NODE_CLASS_MAPPINGS.items()
        # DLATest*: the test-only tiny text-encoder loaders of tests/integration/support, never shipped.
        if node_id.startswith("DLA")
        and not node_id.startswith("DLATest")
        and getattr(cls, "RELATIVE_PYTHON_MODULE", "").startswith("custom_nodes.")
    }
    assert readme_node_ids() == registered
