"""Imports point down: every module's imports (ast, function bodies included) against docs/DESIGN.md's layers."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "molvae"

# Upward imports that another change removes; (importer, imported) as dotted module names. Part T's
# diagnostics move (metrics.model_metrics -> diagnostics, not train) and report.py's version import
# (from ._version, not the package root) are merged, so it is empty; an entry that no longer occurs
# fails test_known_upward_imports_still_occur, so the list cannot outlive its reason.
KNOWN_UPWARD_IMPORTS: set[tuple[str, str]] = set()


def read_layers() -> dict[str, int]:
    """``{module or package name: layer}`` from the ```layers block of docs/DESIGN.md."""
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/DESIGN.md has no ```layers block"
    layers: dict[str, int] = {}
    layer = None
    for line in block.group(1).splitlines():
        found = re.match(r"\s*(\d+)?\s+(molvae/\S*)", line)
        if not found:
            continue
        if found.group(1) is not None:
            layer = int(found.group(1))
        path = found.group(2)
        name = path.removesuffix("/").removesuffix(".py").replace("/", ".")
        layers["molvae" if name == "molvae.__init__" else name] = layer
    return layers


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def imports_of(path: Path) -> set[str]:
    """Dotted names a file imports from molvae (``from . import x`` gives ``pkg.x``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "molvae")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "molvae":
                target = node.module
            else:
                continue
            found.update(f"{target}.{a.name}" for a in node.names)
    return found


def resolve(dotted: str, modules: dict[str, Path]) -> str:
    """The module a dotted import name lands in (``molvae.cli.main`` -> ``molvae.cli``)."""
    while dotted not in modules:
        dotted = dotted.rpartition(".")[0]
    return dotted


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    while module:
        if module in layers:
            return layers[module]
        module = module.rpartition(".")[0]
    return None


def test_every_module_is_on_a_layer():
    layers = read_layers()
    missing = [m for m in package_modules() if layer_of(m, layers) is None]
    assert not missing, f"modules docs/DESIGN.md does not place on a layer: {missing}"


def test_no_import_points_up():
    layers, modules = read_layers(), package_modules()
    upward = []
    for name, path in modules.items():
        for target in {resolve(d, modules) for d in imports_of(path)}:
            if target == name or target.startswith(name + "."):
                continue  # a package's __init__ gathering its own modules
            if layer_of(target, layers) > layer_of(name, layers) and (name, target) not in KNOWN_UPWARD_IMPORTS:
                upward.append(f"{name} (layer {layer_of(name, layers)}) imports {target} "
                              f"(layer {layer_of(target, layers)})")
    assert not upward, "\n".join(upward)


def test_known_upward_imports_still_occur():
    modules = package_modules()
    stale = [(a, b) for a, b in KNOWN_UPWARD_IMPORTS
             if a not in modules or b not in {resolve(d, modules) for d in imports_of(modules[a])}]
    assert not stale, f"remove from KNOWN_UPWARD_IMPORTS (fixed): {stale}"


def test_cli_commands_share_helpers_only_through_common():
    modules = package_modules()
    crossing = []
    for name, path in modules.items():
        if not name.startswith("molvae.cli.") or name == "molvae.cli.common":
            continue
        for target in {resolve(d, modules) for d in imports_of(path)}:
            if target.startswith("molvae.cli.") and target != "molvae.cli.common":
                crossing.append(f"{name} imports {target}")
    assert not crossing, "\n".join(crossing)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walk itself works: a function-level relative import of a higher layer is found."""
    layers = read_layers()
    assert layers["molvae.chem"] < layers["molvae.core"] < layers["molvae.cli"] < layers["molvae"]
    fake = PACKAGE / "metrics" / "suite.py"
    assert "molvae.metrics.chemnet.frechet_distance" in imports_of(fake) or any(
        d.startswith("molvae.metrics.chemnet") for d in imports_of(fake))
    assert resolve("molvae.cli.main", package_modules()) == "molvae.cli"
