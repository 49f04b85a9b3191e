"""Starting a measured child process and talking to it over its pipes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class ChildError(RuntimeError):
    pass


class Child:
    def __init__(self, proc: asyncio.subprocess.Process, name: str, log: Path) -> None:
        self.proc = proc
        self.name = name
        self.log = log

    @classmethod
    async def start(
        cls,
        module: str,
        *args: str,
        log: Path,
        within: float = 60.0,
        profile: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> Child:
        """``profile``: record the child with py-spy into this file (raw format)."""
        env = dict(os.environ) | (extra_env or {})
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("PYTHONHASHSEED", "0")
        prefix: list[str] = []
        if profile is not None:
            py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
                "py-spy"
            )
            if py_spy is None:
                raise ChildError("--profile needs py-spy: .venv/bin/pip install py-spy")
            prefix = [py_spy, "record", "-r", "200", "-f", "raw", "-o", str(profile), "--"]
        with open(log, "ab") as stderr:  # noqa: ASYNC230 - a log file
            proc = await asyncio.create_subprocess_exec(
                *prefix,
                sys.executable,
                "-m",
                module,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                cwd=str(ROOT),
                env=env,
                limit=64 * 1024 * 1024,
            )
        child = cls(proc, module, log)
        first = await child._read(within)
        if not first.get("ready"):
            raise ChildError(f"{module} did not start: {first}; see {log}")
        return child

    async def _read(self, within: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = asyncio.get_running_loop().time() + within
        while True:
            try:
                line = await asyncio.wait_for(
                    self.proc.stdout.readline(), deadline - asyncio.get_running_loop().time()
                )
            except TimeoutError:
                raise ChildError(
                    f"{self.name} did not answer within {within} s; see {self.log}"
                ) from None
            if not line:
                raise ChildError(
                    f"{self.name} exited (code {self.proc.returncode}); see {self.log}"
                )
            # py-spy, when it records the child, writes its own lines here too.
            if line.lstrip().startswith(b"{"):
                break
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def call(self, cmd: str, within: float = 600.0, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **fields}) + "\n").encode())
        await self.proc.stdin.drain()
        answer = await self._read(within)
        if not answer.get("ok"):
            raise ChildError(f"{self.name} {cmd} failed: {answer.get('error')}; see {self.log}")
        return answer

    async def quit(self) -> None:
        try:
            await self.call("quit", within=30)
            await asyncio.wait_for(self.proc.wait(), 30)
        except (ChildError, TimeoutError, BrokenPipeError, ConnectionResetError):
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
