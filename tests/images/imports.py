"""What importing our modules loads, read statically from the sources (no torch import).

``loaded(roots)`` follows the module-level imports of our packages -- what Python runs when it
imports a module -- through parent packages and ``from pkg import submodule``; imports inside
functions run only when called, so they are not followed. ``third_party(path)`` lists the
other packages a file imports anywhere, inside functions too: an image must install them.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests.images.dockerfile import REPO_ROOT

OWN_PACKAGES = ("semisup", "semisup_core", "components", "pipelines")


def module_file(name: str) -> Path | None:
    """The source file of our module ``name`` (a package's __init__.py), or None."""
    base = REPO_ROOT.joinpath(*name.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _module_level(node: ast.AST):
    """The nodes run at import: everything but function bodies."""
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield child
            yield from _module_level(child)


def _imported_names(tree: ast.AST) -> list[str]:
    names = []
    for node in _module_level(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def loaded(roots: list[str]) -> dict[str, Path]:
    """Our modules (name -> file) that importing ``roots`` loads."""
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in OWN_PACKAGES:
            continue
        path = module_file(name)
        if path is None:  # e.g. a class imported with `from pkg import Name`
            continue
        seen[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += _imported_names(ast.parse(path.read_text()))
    return seen


def _optional(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``try: ... except ImportError:`` (optional packages
    with a fallback, e.g. DALI in score.py)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)
                    if isinstance(n, (ast.Import, ast.ImportFrom))}
    return out


def third_party(path: Path) -> set[str]:
    """Top-level names of the packages ``path`` imports, anywhere in the file but in an
    ``except ImportError`` fallback, that are neither the standard library nor ours."""
    names = set()
    tree = ast.parse(path.read_text())
    optional = _optional(tree)
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in OWN_PACKAGES}
