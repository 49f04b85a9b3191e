"""`make run` with a Python older than 3.11: one line, exit 2, and no .venv left."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def old_python(tmp_path: Path) -> Path:
    """This machine's Python, reporting 3.10 to anything that asks for its version:
    the way an old distribution's python3 answers the Makefile's check."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import sys\nsys.version_info = (3, 10, 12, 'final', 0)\n"
    )
    python = tmp_path / "python3"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={shim} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return python


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", ["run", "test"])
def test_make_with_an_old_python_says_so_once_and_leaves_no_venv(tmp_path, target):
    venv = tmp_path / "venv"
    for python, says in (
        (old_python(tmp_path), "is 3.10.12"),
        (tmp_path / "no-such-python", "is not found"),
    ):
        done = subprocess.run(
            ["make", "-s", "-C", str(ROOT), target, f"PYTHON={python}", f"VENV={venv}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        assert "needs Python 3.11 or newer" in lines[0] and says in lines[0]
        assert f"make {target} PYTHON=python3.11" in lines[0]
        assert not venv.exists()
