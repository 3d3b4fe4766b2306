"""llm_server is a leaf library: no module of it imports ``agent`` (read with ast, not grep)."""

from __future__ import annotations

import ast
from pathlib import Path

import llm_server

PACKAGE = Path(llm_server.__file__).resolve().parent


def imported_modules(source: str) -> set[str]:
    """Absolute module names a source file imports, at any depth (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_the_check_sees_every_kind_of_import() -> None:
    source = (
        "import agent\nfrom agent.errors import X\ndef f():\n    import agent.types as t\nfrom . import y\n"
    )
    assert imported_modules(source) == {"agent", "agent.errors", "agent.types"}


def test_no_llm_server_module_imports_agent() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 10  # the whole package was found
    offenders = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in files
        for name in imported_modules(path.read_text(encoding="utf-8"))
        if name == "agent" or name.startswith("agent.")
    }
    assert offenders == set()
