"""The package's shape, as the code review asks for it: short modules and functions, few
parameters, no import cycles, and aiohttp's private parts touched in one module only."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "proxy"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
MAX_PARAMETERS = 8
# The one module allowed to reach into aiohttp's private attributes (see its docstring).
PATCHES = "proxy/serve/protocol.py"


def modules() -> Iterator[tuple[str, ast.Module, str]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        yield str(path.relative_to(PACKAGE.parent)), ast.parse(text), text


def module_name(rel: str) -> str:
    name = rel.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def test_no_module_is_longer_than_a_few_hundred_lines() -> None:
    long = {rel: text.count("\n") for rel, _, text in modules()}
    assert {k: n for k, n in long.items() if n > MAX_MODULE_LINES} == {}


def functions(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_no_function_is_longer_than_a_screen_or_two() -> None:
    long = {
        f"{rel}:{fn.lineno} {fn.name}": (fn.end_lineno or fn.lineno) - fn.lineno + 1
        for rel, tree, _ in modules()
        for fn in functions(tree)
    }
    assert {k: n for k, n in long.items() if n > MAX_FUNCTION_LINES} == {}


def test_no_function_takes_a_long_argument_list() -> None:
    many = {}
    for rel, tree, _ in modules():
        for fn in functions(tree):
            a = fn.args
            names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
            names = [n for n in names if n not in ("self", "cls")]
            if len(names) > MAX_PARAMETERS:
                many[f"{rel}:{fn.lineno} {fn.name}"] = len(names)
    assert many == {}


def imports(rel: str, tree: ast.Module) -> set[str]:
    """The package modules `rel` imports at run time (not under TYPE_CHECKING)."""
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("proxy"):
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}")
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("proxy")}
    return found


def test_there_are_no_import_cycles() -> None:
    parsed = {module_name(rel): tree for rel, tree, _ in modules()}
    graph = {
        name: {m for m in imports(name, tree) if m in parsed and m != name and m != "proxy"}
        for name, tree in parsed.items()
    }
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_aiohttp_private_attributes_are_touched_in_one_module() -> None:
    # `obj._private` on anything from aiohttp: the patched protocol's fields and methods.
    pattern = re.compile(r"\b(?:web\.RequestHandler|self)\._(?:messages|current_request)\b")
    users = {rel for rel, _, text in modules() if pattern.search(text)}
    assert users <= {PATCHES}
