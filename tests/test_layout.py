"""The package layering the README's layout table promises: a package imports only packages
below it, siblings on one level do not import each other, the library never imports Airflow,
no module imports another module's private names, and no module grows into a monolith."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "router_tasks"
# Lower numbers are lower layers. Packages on one level are siblings and stay independent.
LEVELS = {
    "core": 0,
    "data": 1,
    "labeling": 2,
    "routers": 2,
    "routing": 3,
    "training": 3,
    "evaluation": 4,
    "lifecycle": 5,
    "serving": 6,
    "": 7,  # the entry points at the top: cli, pipeline
}
LEVELS["cli"] = LEVELS[""] + 1  # the `tela` command package: over everything, the pipeline included


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LEVELS) else ""


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        yield name, ast.parse(path.read_text(), filename=str(path))


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.lineno, node.module, alias.name


def test_every_package_has_a_level():
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    assert packages <= set(LEVELS), f"give these packages a level in LEVELS: {packages - set(LEVELS)}"


def test_lower_packages_never_import_higher_ones():
    wrong = []
    for name, tree in _modules():
        own = _package_of(name)
        for line, target, item in _imports(tree):
            if not target.startswith("router_tasks"):
                continue
            names_module = item and ((PKG / item).is_dir() or (PKG / f"{item}.py").exists())
            full = f"{target}.{item}" if target == "router_tasks" and names_module else target
            other = _package_of(full)
            if other == own or full == "router_tasks":
                continue
            if LEVELS[other] > LEVELS[own] or (LEVELS[other] == LEVELS[own]):
                wrong.append(f"{name}:{line} imports {full} ({own or 'top'} -> {other or 'top'})")
    assert not wrong, "\n".join(wrong)


def test_the_library_never_imports_airflow():
    hits = [
        f"{n}:{line}"
        for n, tree in _modules()
        for line, target, _ in _imports(tree)
        if target.split(".")[0] == "airflow"
    ]
    assert not hits, hits


@pytest.mark.parametrize("kind", ["module", "name"])
def test_no_private_cross_module_imports(kind):
    wrong = []
    for name, tree in _modules():
        for line, target, item in _imports(tree):
            if not target.startswith("router_tasks") or target == name:
                continue
            private = item if kind == "name" else target.rsplit(".", 1)[-1]
            if private and private.startswith("_") and not private.startswith("__"):
                wrong.append(f"{name}:{line} imports {target}.{item or ''}")
    assert not wrong, "\n".join(wrong)


MAX_MODULE_LINES = 600


def test_no_library_module_is_a_monolith():
    """A module over MAX_MODULE_LINES says at its top (its docstring) why it is one piece."""
    big = {}
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text()
        lines = text.count("\n")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_MODULE_LINES and "one piece because" not in doc.lower():
            big[str(path.relative_to(PKG.parent))] = lines
    assert not big, f"split these modules by responsibility, or say in their docstring why not: {big}"
