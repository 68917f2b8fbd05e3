"""One help page per node, in the place the front end's node help panel reads it, naming every input.

ComfyUI serves the pack's ``WEB_DIRECTORY`` (``web/``) at ``/extensions/<pack folder>/``; the front end
(1.27.10 and 1.49.6 alike: ``NodeHelpService.fetchCustomNodeHelp``) asks for
``/extensions/<pack folder>/docs/<node id>/<locale>.md``, then ``/extensions/<pack folder>/docs/<node id>.md``.
The node list and the inputs come from ComfyUI's own loader (``NODE_CLASS_MAPPINGS``), not from a list here,
so a new node or input without its page fails. tests/integration/browser/test_node_help.py opens the panel.
"""

from __future__ import annotations

import re
import urllib.request

import pytest
from dla_harness.tree import PACK_DIR_NAME, REPO_ROOT

pytestmark = pytest.mark.integration

DOCS = REPO_ROOT / "web" / "docs"
SECTIONS = ("## Inputs", "## Typical wiring")


@pytest.fixture(scope="module")
def pack_nodes(comfy) -> dict[str, dict]:
    """node id -> ComfyUI's V1 node info, for every node ComfyUI's loader registered from this pack."""
    module = f"custom_nodes.{PACK_DIR_NAME}"
    nodes = {
        node_id: cls.GET_NODE_INFO_V1()
        for node_id, cls in comfy.nodes.NODE_CLASS_MAPPINGS.items()
        if getattr(cls, "RELATIVE_PYTHON_MODULE", None) == module
    }
    assert len(nodes) >= 10, f"only {sorted(nodes)} registered from {module}"
    return nodes


def input_names(info: dict) -> list[str]:
    return [name for section in ("required", "optional") for name in info["input"].get(section, {})]


def page(node_id: str) -> str:
    return (DOCS / f"{node_id}.md").read_text(encoding="utf-8")


def test_the_pack_declares_web_directory_with_docs_and_no_javascript():
    """WEB_DIRECTORY is what ComfyUI serves; a .js file there would run in every user's front end."""
    init = (REPO_ROOT / "__init__.py").read_text(encoding="utf-8")
    assert re.search(r'^WEB_DIRECTORY = "\./web"$', init, re.M)
    assert DOCS.is_dir()
    assert list((REPO_ROOT / "web").rglob("*.js")) == []


def test_every_registered_node_has_a_page_and_every_page_a_node(pack_nodes):
    pages = {path.stem for path in DOCS.glob("*.md")}
    assert sorted(set(pack_nodes) - pages) == [], "nodes without web/docs/<node id>.md"
    assert sorted(pages - set(pack_nodes)) == [], "pages for node ids the pack does not register"


def test_every_page_is_titled_with_the_display_name_and_has_its_sections(pack_nodes):
    for node_id, info in pack_nodes.items():
        text = page(node_id)
        assert text.startswith(f"# {info['display_name']}\n"), node_id
        for section in SECTIONS:
            assert f"\n{section}\n" in text, f"{node_id}.md has no '{section}'"
        assert re.search(r"## Typical wiring\n+```\n.*─.*\n", text), f"{node_id}.md: no wiring picture"


def test_every_page_names_every_input_of_its_node(pack_nodes):
    missing = {
        node_id: [name for name in input_names(info) if f"| `{name}` |" not in page(node_id)]
        for node_id, info in pack_nodes.items()
    }
    assert {node_id: names for node_id, names in missing.items() if names} == {}


def test_every_page_lists_no_input_its_node_does_not_have(pack_nodes):
    stale = {}
    for node_id, info in pack_nodes.items():
        inputs_table = page(node_id).split("## Inputs", 1)[1].split("\n## ", 1)[0]
        listed = re.findall(r"^\| `([^`]+)` \|", inputs_table, re.M)
        extra = sorted(set(listed) - set(input_names(info)))
        if extra:
            stale[node_id] = extra
    assert stale == {}


def test_sampler_pages_show_the_stage_picture(pack_nodes):
    samplers = [node_id for node_id, info in pack_nodes.items() if "tau1" in input_names(info)]
    samplers.append("DLAStageConditioning")
    assert len(samplers) >= 5
    for node_id in samplers:
        stages = page(node_id).split("## Stages\n", 1)
        assert len(stages) == 2, f"{node_id}.md has no '## Stages'"
        picture = stages[1].split("```\n", 2)[1]
        lines = picture.splitlines()
        order = [
            next(i for i, line in enumerate(lines) if line.startswith(mark))
            for mark in ("t = 1.0", "t = tau1", "t = tau2", "t = 0.0")
        ]
        assert order == sorted(order), f"{node_id}.md: the timeline must run t = 1 -> tau1 -> tau2 -> 0"
        assert all(f"stage {k}:" in picture for k in (1, 2, 3)), node_id


def test_the_server_serves_every_page_where_the_front_end_asks(comfy_server, pack_nodes):
    for node_id in pack_nodes:
        url = f"{comfy_server.url}/extensions/{PACK_DIR_NAME}/docs/{node_id}.md"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
            assert response.read().decode("utf-8") == page(node_id)
