"""The package graph: no two packages of ``supertiny`` import each other, and stage 3 (``compress``) builds on
the model-artifacts layer, not on stage 2 (``train``)."""

import ast
from collections import defaultdict

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "platform" / "supertiny"


def _unit(module: str) -> str:
    """A module's package below ``supertiny`` (``supertiny.train.base`` -> ``train``), or the module itself
    for top-level modules (``supertiny.config`` -> ``config``)."""
    return module.split(".")[1] if module.count(".") >= 1 else module


def _imports() -> dict[tuple[str, str], list[str]]:
    """(importing unit, imported unit) -> the files that make that import, functions' bodies included."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        source = _unit(".".join(relative.parts))
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("supertiny.") and (target := _unit(name)) != source:
                    edges[(source, target)].append(str(path.relative_to(PACKAGE)))
    return edges


def test_no_two_packages_import_each_other():
    edges = _imports()
    packages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    cycles = sorted((a, b, sorted(set(edges[(a, b)])), sorted(set(edges[(b, a)])))
                    for (a, b) in edges if a < b and (b, a) in edges and a in packages and b in packages)
    assert not cycles, cycles


def test_compress_does_not_build_on_train():
    assert not _imports().get(("compress", "train")), "compress/ imports from train/"


def test_backend_names_are_only_compared_inside_the_backends():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "models" and path.name.endswith("_backend.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and _names_a_backend(node):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, offenders


def _names_a_backend(node: ast.Compare) -> bool:
    sides = [node.left, *node.comparators]
    attribute = any(isinstance(side, ast.Attribute) and side.attr == "backend" for side in sides)
    literal = any(isinstance(side, ast.Constant) and isinstance(side.value, str) for side in sides)
    return attribute and literal
