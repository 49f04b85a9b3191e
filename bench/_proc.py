"""Starting a measured child process and talking to it over its pipes."""

from __future__ import annotations

import asyncio
import json
import os
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
    async def start(cls, module: str, *args: str, log: Path, within: float = 60.0) -> Child:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("PYTHONHASHSEED", "0")
        with open(log, "ab") as stderr:  # noqa: ASYNC230 - a log file
            proc = await asyncio.create_subprocess_exec(
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
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        except TimeoutError:
            raise ChildError(
                f"{self.name} did not answer within {within} s; see {self.log}"
            ) from None
        if not line:
            raise ChildError(f"{self.name} exited (code {self.proc.returncode}); see {self.log}")
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
