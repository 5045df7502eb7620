"""The package's shape: layers as folders with imports flowing downward only (module level and
inside functions), small functions and modules, no private names across modules, and a public
surface that completes in a notebook."""

import ast
import importlib
from pathlib import Path

import pytest

import workbench as wb

PKG = Path(wb.__file__).parent
MAX_LINES = 620  # "about 600"
MAX_FUNCTION_LINES = 80
MODULES = sorted(p for p in PKG.rglob("*.py") if "data" not in p.relative_to(PKG).parts)
NAMES = set()

#: What each layer may import (besides itself). Anything not listed is an upward import.
LAYERS = {
    "core": set(),
    "models": {"core"},
    "techniques": {"core", "models"},
    "findings": {"core"},
    "phenomena": {"core", "models", "techniques", "findings"},
    "viz": {"core"},
    "replicate": {"core", "models", "techniques", "findings", "phenomena", "viz"},
    "course": {"core", "models", "techniques", "findings", "phenomena", "viz"},
    "widgets": {"core", "models", "techniques", "viz"},
    "cli": {"core", "models", "techniques", "findings", "phenomena", "viz", "course", "replicate"},
    "__main__": {"cli"},
    "__init__": {"core", "models", "techniques", "findings", "phenomena", "viz", "replicate"},
}


def dotted(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


NAMES = {dotted(p) for p in MODULES}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, *, module_level_only: bool = False) -> list[tuple[str, str, int]]:
    """``(module imported, name, line)`` for every import of a workbench module in ``path``,
    inside functions too (unless ``module_level_only``). ``from workbench.x import y`` where
    ``workbench.x.y`` is a module names that module."""
    tree = ast.parse(path.read_text())
    here = dotted(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "workbench":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((sub if sub in NAMES else target, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "workbench":
                    out.append((alias.name, "", node.lineno))
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_module_is_over_about_600_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PKG)} has {n} lines; split it by what it does"


def test_no_function_is_over_80_lines():
    long = []
    for p in MODULES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{dotted(p)}.{node.name}: {n} lines")
    assert not long, long


def test_imports_flow_downward_only_including_inside_functions():
    upward = []
    for p in MODULES:
        mine = layer(dotted(p))
        for target, name, line in imports(p):
            theirs = layer(target)
            if theirs != mine and theirs not in LAYERS[mine]:
                upward.append(f"{dotted(p)}:{line} ({mine}) imports {target} {name} ({theirs})")
    assert not upward, upward


def test_the_layer_table_knows_every_folder():
    assert {layer(n) for n in NAMES} <= set(LAYERS), {layer(n) for n in NAMES} - set(LAYERS)


def test_an_upward_import_is_caught(tmp_path):
    """The layer test reads imports inside functions too."""
    fake = PKG / "core" / "zz_upward_probe.py"
    fake.write_text("def f():\n    from workbench.techniques import patching\n    return patching\n")
    try:
        NAMES.add("workbench.core.zz_upward_probe")
        found = [t for t, _, _ in imports(fake) if layer(t) not in LAYERS["core"] | {"core"}]
        assert found == ["workbench.techniques.patching"]
    finally:
        fake.unlink()
        NAMES.discard("workbench.core.zz_upward_probe")


def test_no_private_name_is_imported_from_another_module():
    offenders = [
        f"{dotted(p)}:{line} imports {name} from {target}"
        for p in MODULES
        for target, name, line in imports(p)
        if name.startswith("_")
    ]
    assert not offenders, offenders


def test_module_level_imports_have_no_cycle():
    graph: dict[str, set[str]] = {}
    for p in MODULES:
        deps = {t for t, _, _ in imports(p, module_level_only=True) if t in NAMES and t != "workbench"}
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


def test_every_public_module_is_reachable_from_the_top_and_listed_by_dir():
    listing = dir(wb)
    for name, module in wb.MODULES.items():
        assert getattr(wb, name) is importlib.import_module(module), name
        assert name in listing, name


def test_every_technique_and_phenomenon_has_a_top_level_name():
    named = set(wb.MODULES.values())
    for folder in ("techniques",):
        for p in (PKG / folder).iterdir():
            if p.name != "__init__.py" and not p.name.startswith("__"):
                assert f"workbench.{folder}.{p.stem}" in named, p


def test_all_lists_only_names_that_exist():
    for p in MODULES:
        mod = importlib.import_module(dotted(p)) if p.name != "__main__.py" else None
        for name in getattr(mod, "__all__", []):
            assert hasattr(mod, name), f"{dotted(p)}.__all__ names {name!r}, which it does not define"
