"""The loyalty oracle is independent of the code it checks."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ORACLE = Path(__file__).with_name("loyalty_oracle.py")


def imported_modules(source: str) -> set[str]:
    """Every module an import statement names, anywhere in ``source`` (relative ones as
    ``.name``), and ``__import__``/``importlib`` calls as such."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Name) and node.id == "__import__":
            names.add("__import__")
    return names


def test_the_loyalty_oracle_imports_only_the_standard_library() -> None:
    modules = imported_modules(ORACLE.read_text())
    assert modules, "the oracle imports nothing at all: is this the right file?"
    outside = {m for m in modules
               if m.startswith(".") or m in {"__import__", "importlib"}
               or m.split(".")[0] not in sys.stdlib_module_names}
    assert outside == set(), f"loyalty_oracle imports {sorted(outside)}"
    assert not {m for m in modules if m.split(".")[0] in {"core", "app", "tables", "agents"}}


def test_the_import_check_sees_project_imports() -> None:
    """The check above would catch the imports the oracle used to have."""
    source = "from core.pricing import price_at\nimport tables.loyalty\nfrom . import x\n"
    assert imported_modules(source) == {"core.pricing", "tables.loyalty", "."}
