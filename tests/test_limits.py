"""The codebase's own rules, checked: file and function sizes, import direction, Keras Tuner.

These keep the layout the README describes from drifting: ``shipseg/`` is the floor the
commands stand on, every file and function stays short enough to read at a glance, and Keras
Tuner's private API is reached only through ``shipseg/search/kt_private.py``.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import keras_tuner
import pytest

from conftest import ROOT
from shipseg import LAYERS

MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 60
# The top level: the commands and the facades users import; the package never imports them.
TOP_LEVEL = {path.stem for path in ROOT.glob("*.py")}
MAX_FOLDER_MODULES = 10
SOURCES = sorted(
    path
    for path in [*ROOT.glob("*.py"), *ROOT.glob("shipseg/**/*.py"), *ROOT.glob("benchmarks/*.py")]
)
PACKAGE = sorted(ROOT.glob("shipseg/**/*.py"))
TOP = len(LAYERS)  # the package's own root modules (``cli``) stand above every folder
TESTS = sorted(ROOT.glob("tests/*.py"))


@functools.cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_no_source_file_passes_600_lines():
    long = {relative(p): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"over {MAX_FILE_LINES} lines: {long}"


def test_no_function_passes_60_lines_docstring_included():
    long = {}
    for path in SOURCES:
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{relative(path)}:{node.lineno} {node.name}"] = lines
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def imported_modules(tree: ast.Module) -> set[str]:
    """Every module ``tree`` imports, at any depth (function-level imports included)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "shipseg":
                names |= {f"shipseg.{alias.name}" for alias in node.names}
    return names


def test_the_package_never_imports_a_command_or_a_top_level_module():
    upward = {
        relative(path): sorted(m for m in imported_modules(parse(path)) if m in TOP_LEVEL)
        for path in PACKAGE
    }
    assert not {path: names for path, names in upward.items() if names}


def module_name(path: Path) -> str:
    """``shipseg/train/run.py`` -> ``shipseg.train.run`` (a folder's ``__init__`` is the folder)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_graph() -> dict[str, set[str]]:
    """Each package module and the package modules it imports, at any depth.

    ``from shipseg.x import y`` names module ``shipseg.x.y`` where that is a module, else
    ``shipseg.x``.
    """
    known = {module_name(path) for path in PACKAGE}
    graph = {}
    for path in PACKAGE:
        imports = set()
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shipseg"):
                for alias in node.names:
                    inner = f"{node.module}.{alias.name}"
                    imports.add(inner if inner in known else node.module)
            elif isinstance(node, ast.Import):
                imports |= {a.name for a in node.names if a.name.startswith("shipseg")}
        graph[module_name(path)] = imports - {module_name(path), "shipseg"}
    return graph


def layer(module: str) -> int:
    """Where ``module`` stands in ``shipseg.LAYERS``; the root's own modules stand on top."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 or parts[1] in LAYERS else TOP


def test_every_package_module_sits_in_a_folder_named_in_the_layers_or_is_the_cli():
    folders = {path.parent.name for path in PACKAGE if path.parent != ROOT / "shipseg"}
    assert folders == set(LAYERS)
    roots = {path.stem for path in PACKAGE if path.parent == ROOT / "shipseg"}
    assert roots == {"__init__", "cli"}


def test_no_folder_of_the_package_holds_more_than_ten_modules():
    counts = {
        folder: len([p for p in (ROOT / "shipseg" / folder).glob("*.py") if p.stem != "__init__"])
        for folder in LAYERS
    }
    assert all(count <= MAX_FOLDER_MODULES for count in counts.values()), counts


def test_imports_inside_the_package_run_from_higher_layers_to_lower():
    upward = [
        f"{module} imports {dependency}"
        for module, dependencies in sorted(package_graph().items())
        for dependency in sorted(dependencies)
        if layer(dependency) > layer(module)
    ]
    assert not upward, f"see shipseg.LAYERS: {upward}"


def test_the_layer_check_ranks_folders_as_listed_and_the_cli_on_top():
    assert layer("shipseg.core.errors") < layer("shipseg.serve.api") < layer("shipseg.cli")
    assert layer("shipseg.predict") == LAYERS.index("predict")
    assert layer("shipseg.train.run") > layer("shipseg.predict.detection")


def test_the_package_has_no_import_cycle():
    graph, done, cycles = package_graph(), set(), []

    def visit(module: str, path: list[str]) -> None:
        for dependency in sorted(graph.get(module, ())):
            if dependency in path:
                cycles.append(" -> ".join([*path[path.index(dependency) :], dependency]))
            elif dependency not in done:
                visit(dependency, [*path, dependency])
        done.add(module)

    for module in sorted(graph):
        visit(module, [module])
    assert not cycles


@functools.cache
def keras_tuner_private_names() -> frozenset[str]:
    """Underscore names Keras Tuner defines on its classes: methods and ``self._x`` fields."""
    names = set()
    for path in Path(keras_tuner.__file__).parent.rglob("*.py"):
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("_"):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                names.add(node.attr)
    return frozenset(n for n in names if not (n.startswith("__") and n.endswith("__")))


def own_names(trees: list[ast.Module]) -> set[str]:
    """Underscore names this project defines at module level (its own helpers)."""
    return {
        node.name
        for tree in trees
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name.startswith("_")
    }


def private_keras_tuner_uses(path: Path, private: set[str]) -> list[str]:
    """Where ``path`` imports Keras Tuner's internals, reads a private name or overrides one."""
    found = []
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras_tuner.src"):
            found.append(f"{node.lineno}: from {node.module} import")
        elif isinstance(node, ast.Attribute) and node.attr in private:
            found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ClassDef):
            found += [
                f"{item.lineno}: overrides {node.name}.{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef) and item.name in private
            ]
    return found


@pytest.mark.parametrize(
    "path",
    [p for p in [*SOURCES, *TESTS] if p.name not in ("kt_private.py", "test_kt_private.py")],
    ids=relative,
)
def test_keras_tuners_private_api_is_used_only_through_kt_private(path):
    private = keras_tuner_private_names() - own_names([parse(p) for p in SOURCES])
    assert not private_keras_tuner_uses(path, private), "move it into shipseg/search/kt_private.py"


@pytest.mark.parametrize("command", ["search", "train", "inference", "export", "serve"])
def test_each_option_of_each_command_states_its_default_at_most_once(command):
    import importlib

    text = " ".join(importlib.import_module(command).build_parser().format_help().split())
    assert "(default: None)" not in text and "(default: False)" not in text
    twice = re.findall(r"\(default:[^()]*\) \(default:[^()]*\)", text)
    assert not twice, f"{command}.py --help states a default twice: {twice}"
    assert "(default: " in text  # the defaults the help does not name are still shown


def test_the_readme_stays_a_way_in_and_its_layout_table_names_every_module():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300, "move measurements and detail to docs/"
    modules = [*ROOT.glob("*.py"), *(p for p in PACKAGE if p.name != "__init__.py")]
    modules += [ROOT / "shipseg" / folder for folder in LAYERS]
    missing = [relative(path) for path in modules if f"`{relative(path)}`" not in readme]
    assert not missing, f"the README's layout table misses {missing}"


# Public functions of three or more parameters say what each one means (Google "Args:").
MIN_DOCUMENTED_PARAMETERS = 3
DOCUMENTED = sorted([*ROOT.glob("*.py"), *(ROOT / "shipseg").rglob("*.py")])


def parameters(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """Its named parameters: ``self``, ``cls``, ``*args`` and ``**kwargs`` not counted."""
    arguments = function.args
    named = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
    return [a.arg for a in named if a.arg not in ("self", "cls")]


def documented_parameters(docstring: str | None) -> set[str]:
    """The names the entries of a docstring's ``Args:`` section start with."""
    names, section, entry = set(), None, None
    for line in (docstring or "").expandtabs().splitlines():
        indent, text = len(line) - len(line.lstrip()), line.strip()
        if section is None:
            section = indent if text == "Args:" else None
        elif text and indent <= section:
            break
        elif text and (entry is None or indent == entry):
            entry = indent
            if found := re.match(r"\*{0,2}(\w+)\s*(\([^)]*\))?\s*:", text):
                names.add(found.group(1))
    return names


def public_functions(body: list[ast.stmt], owner: ast.ClassDef | None = None):
    """``(class or None, function)`` for each function of ``body`` and of its public classes.

    Nested functions are not public; ``if``/``try`` blocks at module or class level are read.
    """
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield owner, node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            yield from public_functions(node.body, node)
        elif isinstance(node, ast.If | ast.Try):
            handlers = [h.body for h in getattr(node, "handlers", [])]
            for block in (node.body, node.orelse, *handlers, getattr(node, "finalbody", [])):
                yield from public_functions(block, owner)


def undocumented_parameters(tree: ast.Module) -> dict[str, list[str]]:
    """``{function: [its parameters the docstrings leave out]}`` for the rule's functions.

    A constructor (``__init__``) of a public class may document its parameters in the class
    docstring or its own; other names starting with ``_`` are not public.
    """
    missing = {}
    for owner, function in public_functions(tree.body):
        named = parameters(function)
        if len(named) < MIN_DOCUMENTED_PARAMETERS:
            continue
        if owner is not None and function.name == "__init__":
            label = owner.name
            documented = documented_parameters(ast.get_docstring(owner))
        elif function.name.startswith("_"):
            continue
        else:
            label = f"{owner.name}.{function.name}" if owner else function.name
            documented = set()
        documented |= documented_parameters(ast.get_docstring(function))
        if left_out := [name for name in named if name not in documented]:
            missing[label] = left_out
    return missing


def test_public_functions_of_three_or_more_parameters_document_each_in_args():
    missing = [
        f"{relative(path)}:{function}: {', '.join(names)}"
        for path in DOCUMENTED
        for function, names in undocumented_parameters(parse(path)).items()
    ]
    assert not missing, "add them to the docstring's Args: section:\n" + "\n".join(missing)


def test_the_parameter_check_reads_args_sections_and_class_docstrings():
    source = '''
def documented(a, b, *rest, c=1, **options):
    """Does.

    Args:
        a: First.
        b (int): Second,
            continued: not an entry.
        c: Third.

    Returns:
        d: Not a parameter.
    """
def undocumented(a, b, c):
    """Half done.

    Args:
        a: Only this one.
    """
def _private(a, b, c): pass
def short(a, b): pass
class Public:
    """A class.

    Args:
        a: Given to the constructor.
    """
    def __init__(self, a, b, c): pass
    def method(self, a, b, c):
        def nested(a, b, c): pass
class _Hidden:
    def method(self, a, b, c): pass
'''
    assert undocumented_parameters(ast.parse(source)) == {
        "undocumented": ["b", "c"],
        "Public": ["b", "c"],
        "Public.method": ["a", "b", "c"],
    }
