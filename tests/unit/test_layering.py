"""The application (bot/) never depends on its Discord layer (cogs/): the CLI and
the pipeline run without discord.py's extensions, and cogs/ can change freely."""

from __future__ import annotations

import ast
from pathlib import Path

import bot

BOT_DIR = Path(bot.__file__).parent


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_nothing_under_bot_imports_from_cogs() -> None:
    offenders = {
        str(path.relative_to(BOT_DIR.parent)): sorted(
            name for name in imported_modules(path) if name == "cogs" or name.startswith("cogs.")
        )
        for path in BOT_DIR.rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}
    assert len(offenders) > 30  # the walk saw the package, not an empty folder
