"""Imports that read one way: no pack module imports another's ``_private`` names, no import cycles;
the test harness is imported as a package, never loaded by path.

Scanned with the standard library's ``ast`` (nothing is imported): every module of ``dla_core/``
and ``nodes/`` (and, for private names, ``bench/``). Relative imports resolve as ComfyUI loads the
pack (the repository is the package, so ``..dla_core.x`` from ``nodes/`` is ``dla_core.x``).
Cycles count every import between pack modules, function-local ones included: a cycle that a local
import hides from the interpreter is still two modules that each need the other (only heavy optional
libraries -- transformers, diffusers, peft, accelerate -- and the CLI dispatchers' commands load lazily).

Harness: tests/ and bench/ import shared code by module name (``dla_harness`` and the rest of tests/lib),
never with ``importlib.util.spec_from_file_location``, and find the pack ComfyUI loaded from ComfyUI's own
naming rule (``dla_harness.pack_module``), never by iterating ``sys.modules``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dla_core", "nodes")


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _pack_files(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    return {_module_name(p, root): p for package in packages for p in sorted((root / package).rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """Absolute dotted name of ``from <node.module> import ...`` written in ``module``."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str, path: Path, known: set[str], top_level_only: bool):
    """(imported module, imported names, line) for every import in ``path`` that targets a known module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # module level, including inside if/try blocks, never inside functions or classes
        stack, nodes = list(tree.body), []
        while stack:
            node = stack.pop()
            nodes.append(node)
            if isinstance(node, (ast.If, ast.Try)):
                stack += [
                    *node.body,
                    *node.orelse,
                    *getattr(node, "finalbody", []),
                    *[n for h in getattr(node, "handlers", []) for n in h.body],
                ]
    is_package = path.name == "__init__.py"
    for node in nodes:
        if isinstance(node, ast.Import):  # absolute: ComfyUI owns the top-level ``nodes``; ours is relative
            for alias in node.names:
                if alias.name in known and alias.name.split(".")[0] != "nodes":
                    yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            if node.level == 0 and target.split(".")[0] == "nodes":
                continue  # ComfyUI's own top-level module
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in known:
                    yield submodule, [], node.lineno
                elif target in known:
                    yield target, [alias.name], node.lineno


def private_imports(root: Path = ROOT, packages=(*PACKAGES, "bench")) -> list[str]:
    files = _pack_files(root, packages)
    found = []
    for module, path in files.items():
        for target, names, line in _imports(module, path, set(files), top_level_only=False):
            for name in names:
                if name.startswith("_") and not name.startswith("__") and target != module:
                    found.append(f"{path.relative_to(root)}:{line} imports {target}.{name}")
    return found


def import_cycles(root: Path = ROOT, packages=PACKAGES) -> list[list[str]]:
    files = _pack_files(root, packages)
    graph = {
        m: sorted({t for t, _, _ in _imports(m, p, set(files), top_level_only=False) if t != m})
        for m, p in files.items()
    }
    cycles, state = [], {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in graph[module]:
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target) :] + [target])
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    return cycles


def test_the_scan_sees_the_pack():
    files = _pack_files()
    assert {"dla_core", "dla_core.flux.references", "dla_core.train.trainer", "nodes", "nodes.qwen_clip"} <= set(files)


def test_no_module_imports_another_modules_private_names():
    assert private_imports() == []


def test_no_import_cycle_among_pack_modules():
    assert import_cycles() == []


def test_the_scans_catch_a_private_import_and_a_cycle(tmp_path):
    pack = tmp_path / "dla_core"
    (pack / "sub").mkdir(parents=True)
    (pack / "__init__.py").write_text("")
    (pack / "sub" / "__init__.py").write_text("")
    (pack / "a.py").write_text("from .b import helper\n")
    (pack / "b.py").write_text("from . import a\n\ndef helper():\n    from .sub.c import _secret\n")
    (pack / "sub" / "c.py").write_text("_secret = 1\n\ndef f():\n    from ..a import helper\n")
    (tmp_path / "nodes").mkdir()
    (tmp_path / "nodes" / "__init__.py").write_text("from ..dla_core.sub.c import _secret\nfrom . import x\n")
    (tmp_path / "nodes" / "x.py").write_text("import nodes\nfrom nodes import _private_of_comfyui\n")  # ComfyUI's
    assert private_imports(tmp_path, ("dla_core", "nodes")) == [
        "dla_core/b.py:4 imports dla_core.sub.c._secret",
        "nodes/__init__.py:1 imports dla_core.sub.c._secret",
    ]
    # a <-> b at module level; a -> b -> c -> a through function-local imports
    assert import_cycles(tmp_path) == [
        ["dla_core.a", "dla_core.b", "dla_core.a"],
        ["dla_core.a", "dla_core.b", "dla_core.sub.c", "dla_core.a"],
    ]


# ----------------------------------------------------------------------------- the test harness
HARNESS_DIRS = ("tests", "bench")
_SEQUENCE_BUILDERS = {"list", "tuple", "set", "sorted", "dict", "iter", "enumerate", "reversed", "frozenset"}


def _is_sys_modules(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "modules"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    )


def harness_loading_problems(root: Path = ROOT, dirs=HARNESS_DIRS) -> list[str]:
    """``path:line what`` for every load-by-path (``spec_from_file_location``) and every walk over ``sys.modules``
    (``.items()`` / ``.values()`` / ``.keys()``, a ``for`` or comprehension over it, ``list(sys.modules)`` ...)."""
    found = []
    for path in sorted(p for folder in dirs for p in (root / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        where = path.relative_to(root)
        for node in ast.walk(tree):
            name = (
                node.attr
                if isinstance(node, ast.Attribute)
                else node.id
                if isinstance(node, ast.Name)
                else next((a.name for a in node.names if a.name == "spec_from_file_location"), None)
                if isinstance(node, ast.ImportFrom)
                else None
            )
            if name == "spec_from_file_location":
                found.append((where, node.lineno, "loads a file by path (spec_from_file_location)"))
            if not _is_sys_modules(node):
                continue
            parent = parents.get(node)
            walks = (
                (isinstance(parent, ast.Attribute) and parent.attr in {"items", "values", "keys", "copy"})
                or (isinstance(parent, (ast.For, ast.AsyncFor, ast.comprehension)) and parent.iter is node)
                or (
                    isinstance(parent, ast.Call)
                    and isinstance(parent.func, ast.Name)
                    and parent.func.id in _SEQUENCE_BUILDERS
                    and node in parent.args
                )
            )
            if walks:
                found.append((where, node.lineno, "searches sys.modules (use dla_harness.pack_module)"))
    return [f"{where.as_posix()}:{line} {what}" for where, line, what in sorted(found)]


def test_the_harness_scan_sees_tests_and_bench():
    scanned = {p.relative_to(ROOT).as_posix() for folder in HARNESS_DIRS for p in (ROOT / folder).rglob("*.py")}
    assert {"tests/lib/dla_harness/in_process.py", "tests/integration/conftest.py", "bench/bench_staged.py"} <= scanned


def test_tests_and_bench_load_no_file_by_path_and_search_no_sys_modules():
    assert harness_loading_problems() == []


def test_the_harness_scan_catches_a_path_load_and_a_sys_modules_search(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "a.py").write_text(
        "import importlib.util\nimport sys\n"
        "spec = importlib.util.spec_from_file_location('x', 'x.py')\n"
        "for name, module in list(sys.modules.items()):\n    pass\n"
        "names = [n for n in sys.modules]\n"
        "ok = sys.modules.get('x'), 'x' in sys.modules, sys.modules['sys']\n"
    )
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "b.py").write_text(
        "from importlib.util import spec_from_file_location\nimport sys\nfound = sorted(sys.modules)\n"
    )
    assert harness_loading_problems(tmp_path) == [
        "bench/b.py:1 loads a file by path (spec_from_file_location)",
        "bench/b.py:3 searches sys.modules (use dla_harness.pack_module)",
        "tests/a.py:3 loads a file by path (spec_from_file_location)",
        "tests/a.py:4 searches sys.modules (use dla_harness.pack_module)",
        "tests/a.py:6 searches sys.modules (use dla_harness.pack_module)",
    ]
