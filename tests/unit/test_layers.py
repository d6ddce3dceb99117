"""The package's layers, checked from the source: imports go one way and never in a circle.

    errors <- _sys <- ebpf <- device <- netmap <- vtnet_py (the public facade)
           <- admin, apps <- cli (vtnetmap_cli)

A module may import from its own layer and the layers to its left. Every import counts:
module level, inside functions, and under ``TYPE_CHECKING`` (a type-only import upward
is still a dependency a reader has to follow). No root, no kernel: modules are imported
(so a missing module fails here) and their source is read with ``ast``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import vtnetmap_cli

import vtnet_py

# layer rank of each top-level part; admin and apps are side by side (neither imports the other)
LAYERS: dict[str, int] = {
    "vtnet_py.errors": 0,
    "vtnet_py._sys": 1,
    "vtnet_py.ebpf": 2,
    "vtnet_py.device": 3,
    "vtnet_py.netmap": 4,
    "vtnet_py": 5,  # the package root: re-exports of the netmap API
    "vtnet_py.admin": 6,
    "vtnet_py.apps": 6,
    "vtnetmap_cli": 7,
}
SIDE_BY_SIDE = {("vtnet_py.admin", "vtnet_py.apps"), ("vtnet_py.apps", "vtnet_py.admin")}
OURS = ("vtnet_py", "vtnetmap_cli")


def all_modules() -> dict[str, Path]:
    """Every module of both packages, by dotted name, with its source file."""
    out: dict[str, Path] = {}
    for pkg in (vtnet_py, vtnetmap_cli):
        out[pkg.__name__] = Path(pkg.__file__ or "")
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.endswith(".__main__"):  # runs the CLI when imported: read it only
                spec = importlib.util.find_spec(info.name)
                assert spec is not None and spec.origin
                out[info.name] = Path(spec.origin)
                continue
            mod = importlib.import_module(info.name)
            if not (mod.__file__ or "").endswith(".py"):
                continue  # a compiled extension: importable (checked here), no Python imports
            out[info.name] = Path(mod.__file__ or "")
    return out


MODULES = all_modules()


def layer_of(module: str) -> str:
    """The longest LAYERS key that is ``module`` or a package containing it."""
    best = ""
    for key in LAYERS:
        if (module == key or module.startswith(key + ".")) and len(key) > len(best):
            best = key
    if not best:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS")
    return best


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def imports_of(module: str) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import of one of our modules in ``module``.

    ``from P import x`` names module ``P.x`` when that is a module, else ``P``; relative
    imports are resolved against the module's package.
    """
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in OURS:
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] not in OURS:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in MODULES else base


def graph() -> dict[str, set[str]]:
    return {m: {imp for _, imp in imports_of(m) if imp != m} for m in MODULES}


def test_every_module_is_in_a_layer() -> None:
    assert len(MODULES) > 30
    for m in MODULES:
        layer_of(m)


def test_imports_go_one_way() -> None:
    bad = []
    for m in sorted(MODULES):
        here = layer_of(m)
        for line, imp in imports_of(m):
            there = layer_of(imp)
            if (here, there) in SIDE_BY_SIDE or LAYERS[there] > LAYERS[here]:
                bad.append(f"{MODULES[m].name}:{line}: {m} imports {imp} ({here} -> {there})")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``g`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    "g, expect",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"x": {"y"}, "y": {"y"}}, ["y", "y"]),
    ],
)
def test_find_cycle(g: dict[str, set[str]], expect: list[str] | None) -> None:
    assert find_cycle(g) == expect


def test_the_checker_sees_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    """The parser finds imports inside functions and under TYPE_CHECKING, resolves
    relative ones, and names the submodule of ``from P import mod``."""
    src = tmp_path / "probe.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from vtnet_py.netmap.port import Port\n"
        "def f():\n"
        "    from ..netmap import ring\n"
        "    import vtnetmap_cli.main\n"
    )
    MODULES["vtnet_py._sys.probe"] = src
    try:
        got = sorted(imp for _, imp in imports_of("vtnet_py._sys.probe"))
    finally:
        del MODULES["vtnet_py._sys.probe"]
    assert got == ["vtnet_py.netmap.port", "vtnet_py.netmap.ring", "vtnetmap_cli.main"]
