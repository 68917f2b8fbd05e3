"""README.md and docs/*.md stay true to the repository: links, quoted commands, the node table, the length.

* Every relative link (and image) in README.md and docs/*.md names an existing file or folder, and its
  ``#anchor``, if any, a heading of the target page (GitHub's heading ids).
* Every ``python -m dla_core ...`` / ``python -m dla_core.train ...`` (also behind ``accelerate launch``)
  in a fenced code block parses with the command line's own parser, and the ``configs/`` files it names exist.
* The README's node table lists exactly the node ids declared in ``nodes/`` (``node_id="..."``), each
  with a help page; tests/integration/test_readme_node_table.py checks it against what ComfyUI registers.
* The README stays one screenful of purpose (at most 150 lines); the rest lives in docs/.

The README's ``<!-- ci:standalone -->`` block has its own test (tests/test_generate.py).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 150

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
NODE_ROW = re.compile(r"^\|\s*`(DLA\w+)`\s*\|", re.M)
NODE_DECLARATION = re.compile(r"node_id=\"(DLA\w+)\"")


def page_id(path: Path) -> str:
    return str(path.relative_to(REPO))


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code (links there are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def github_slug(heading: str) -> str:
    """GitHub's id of a heading: lower case, punctuation dropped (word characters, '-' and ' ' kept), ' ' -> '-'."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for _, heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links(path: Path) -> list[str]:
    links = LINK.findall(prose(path.read_text(encoding="utf-8")))
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:", link)]  # http:, https:, mailto:


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_resolves(page):
    broken = []
    for link in relative_links(page):
        target, _, anchor = link.partition("#")
        resolved = (page.parent / target).resolve() if target else page
        if not resolved.exists():
            broken.append(f"{link}: no {resolved.relative_to(REPO) if REPO in resolved.parents else resolved}")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(f"{link}: no heading #{anchor} in {resolved.name}")
    assert broken == []


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / link.partition("#")[0]).resolve() for link in relative_links(README)}
    assert [page_id(page) for page in PAGES[1:] if page.resolve() not in linked] == []


def test_readme_is_at_most_one_screenful_of_purpose():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES


# ------------------------------------------------------------------------------------ quoted commands
def quoted_commands(path: Path) -> list[list[str]]:
    """argv (after ``python -m dla_core`` / ``dla_core.train``, with the module first) of each quoted command."""
    commands = []
    for block in FENCE.findall(path.read_text(encoding="utf-8")):
        joined = re.sub(r"\\\n\s*", " ", block)  # continuation lines
        for line in joined.splitlines()[1:-1]:
            line = re.sub(r"\s+#.*$", "", line).strip()
            words = shlex.split(line) if "dla_core" in line else []
            for module in ("dla_core", "dla_core.train"):
                if module in words and words[words.index(module) - 1] == "-m":
                    start = words.index(module)
                    if words[0] == "python" or words[:2] == ["accelerate", "launch"]:
                        commands.append(words[start:])
    return commands


def parse(argv: list[str]):
    module, args = argv[0], argv[1:]
    if module == "dla_core":
        from dla_core.cli import build_parser

        selected = next((arg for arg in args if not arg.startswith("-")), None)
        return build_parser(selected).parse_args(args)
    from dla_core.train.__main__ import COMMANDS, build_parser

    if not args or args[0] not in COMMANDS:
        args = ["train", *args]  # as dla_core.train's main: `python -m dla_core.train --config x` trains
    return build_parser().parse_args(args)


ALL_COMMANDS = [(page, argv) for page in PAGES for argv in quoted_commands(page)]


def test_the_pages_quote_the_commands_this_test_checks():
    where = {page_id(page) for page, _ in ALL_COMMANDS}
    assert {"README.md", "docs/command-line.md", "docs/training.md"} <= where
    assert sum(argv[0] == "dla_core.train" for _, argv in ALL_COMMANDS) >= 5


@pytest.mark.parametrize(
    "page, argv", ALL_COMMANDS, ids=[f"{page_id(page)}: {' '.join(argv)[:60]}" for page, argv in ALL_COMMANDS]
)
def test_quoted_command_parses_and_its_config_files_exist(page, argv):
    try:
        parse(argv)
    except SystemExit as error:  # argparse's way of refusing
        pytest.fail(f"{page_id(page)}: `python -m {' '.join(argv)}` does not parse (exit {error.code})")
    for word in argv:
        if word.startswith("configs/"):
            assert (REPO / word).is_file(), f"{page_id(page)}: {word} does not exist"


def test_readme_generate_command_is_the_main_job():
    commands = [argv for argv in quoted_commands(README) if argv[0] == "dla_core"]
    assert ["generate", "--reference"] == [commands[-1][1], commands[-1][2]]
    assert "pytest" in README.read_text(encoding="utf-8").split("## The two commands", 1)[1].split("##", 1)[0]


# ------------------------------------------------------------------------------------ the node table
def readme_node_ids() -> list[str]:
    section = README.read_text(encoding="utf-8").split("\n## Nodes", 1)[1].split("\n## ", 1)[0]
    return NODE_ROW.findall(section)


def declared_node_ids() -> set[str]:
    sources = [path.read_text(encoding="utf-8") for path in (REPO / "nodes").rglob("*.py")]
    return {node_id for source in sources for node_id in NODE_DECLARATION.findall(source)}


def test_readme_node_table_lists_every_declared_node_once():
    listed = readme_node_ids()
    assert len(listed) == len(set(listed))
    assert set(listed) == declared_node_ids()


def test_every_node_in_the_readme_has_a_help_page():
    assert [node_id for node_id in readme_node_ids() if not (REPO / "web" / "docs" / f"{node_id}.md").is_file()] == []


# ------------------------------------------------------------------------------------ statements the docs make
def test_tau1_of_one_keeps_the_first_step_from_pure_noise_in_stage_1():
    """docs/staging-recipes.md: with tau1 = 1 the step at t = 1.0 (a schedule from pure noise) is stage 1."""
    from dla_core.flux.sampling import flux_sigmas
    from dla_core.schedule import stage_for_sigma, stage_step_counts

    sigmas = flux_sigmas(1024, 1024, 28)
    assert float(sigmas[0]) == 1.0 and stage_for_sigma(1.0, 1.0, 0.0) == 1
    assert tuple(stage_step_counts(sigmas, 1.0, 0.0)) == (1, 27, 0)
    assert tuple(stage_step_counts(sigmas, 0.95, 0.85)) == (4, 7, 17)  # the plan the docs quote: 1-4, 5-11, 12-28


REPO_PATH = re.compile(r"`((?:dla_core|nodes|tests|bench|web|configs|workflows|docs|\.ci|\.github)/[\w./-]*)`")


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_repository_path_the_page_quotes_exists(page):
    """A quoted `dla_core/...`, `nodes/...`, `tests/...` path (code map, test names) is a real file or folder."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    quoted = {match.rstrip(".") for match in REPO_PATH.findall(text)}
    assert sorted(path for path in quoted if not (REPO / path).exists()) == []
