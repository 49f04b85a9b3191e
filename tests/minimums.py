"""Print ``name==version`` for the lowest versions pyproject.toml admits.

``make test-minimums`` installs these over the dev environment of ``.venv-min``
and runs the type check and the end-to-end generation tests: a ``>=`` that
admits a release lacking something the bot uses fails there, not in a server
owner's install. Without arguments every runtime dependency is pinned; with
names, only those.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^,;\s]*)")


def minimums(pyproject: Path, only: set[str]) -> list[str]:
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    pins = []
    for requirement in data["project"]["dependencies"]:
        match = _REQUIREMENT.match(requirement)
        if match is None:
            continue
        name, version = match.groups()
        if not only or name.lower() in only:
            pins.append(f"{name}=={version}")
    return pins


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    print("\n".join(minimums(root / "pyproject.toml", {a.lower() for a in sys.argv[1:]})))
