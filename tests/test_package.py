"""The package's shape: small modules, imports flowing one way, no private names across modules,
and a public surface that completes in a notebook."""

import ast
import importlib
from pathlib import Path

import pytest

import workbench as wb

PKG = Path(wb.__file__).parent
MAX_LINES = 620  # "about 600"
MODULES = sorted(p for p in PKG.rglob("*.py") if "data" not in p.relative_to(PKG).parts)


def dotted(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def top_level_imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module imported, names)`` for the module-level relative imports of ``path``."""
    tree = ast.parse(path.read_text())
    here = dotted(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            out.append((target, [a.name for a in node.names]))
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_module_is_over_about_600_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PKG)} has {n} lines; split it by what it does"


def test_no_private_name_is_imported_from_another_module():
    offenders = [
        f"{dotted(p)} imports {name} from {target}"
        for p in MODULES
        for target, names in top_level_imports(p)
        for name in names
        if name.startswith("_")
    ]
    assert not offenders, offenders


def test_module_level_imports_have_no_cycle():
    graph: dict[str, set[str]] = {}
    names = {dotted(p) for p in MODULES}
    for p in MODULES:
        deps = set()
        for target, imported in top_level_imports(p):
            for n in imported:  # "from . import checks" names a module
                if f"{target}.{n}" in names:
                    deps.add(f"{target}.{n}")
            if target in names and target != "workbench":
                deps.add(target)
        graph[dotted(p)] = deps - {dotted(p)}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in graph.get(node, ()):
            if dep.startswith(node + "."):
                continue  # a package importing its own submodules
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, node, dep]))
            if dep not in state:
                visit(dep, [*stack, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_every_module_is_reachable_from_the_top_and_listed_by_dir():
    top = sorted({p.relative_to(PKG).parts[0].removesuffix(".py") for p in MODULES} - {"__init__", "__main__"})
    listing = dir(wb)
    for name in top:
        assert getattr(wb, name) is importlib.import_module(f"workbench.{name}"), name
        assert name in listing, name


def test_all_lists_only_names_that_exist():
    for p in MODULES:
        mod = importlib.import_module(dotted(p)) if p.name != "__main__.py" else None
        for name in getattr(mod, "__all__", []):
            assert hasattr(mod, name), f"{dotted(p)}.__all__ names {name!r}, which it does not define"
