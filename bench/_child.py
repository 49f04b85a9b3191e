"""What every measured child process shares: the command pipe, CPU, memory, loop lag.

A child reads one JSON command per line on stdin and answers one JSON line on
stdout. Its own CPU time (``getrusage(RUSAGE_SELF)``: every thread, the Pillow pool
and the SQLite thread included) is all that is measured, never the emulators'.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench._steps import StepTimer

PROBE_INTERVAL = 0.010


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a child's ``main`` on asyncio's own loop, as the bot runs, or on uvloop
    with BENCH_LOOP=uvloop (``pip install uvloop``), for the comparison in
    RESULTS.md. BENCH_SPEED=0 is handled in ``bench/__init__.py``."""
    factory = None
    if os.environ.get("BENCH_LOOP") == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def memory_kib() -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since start or the last reset) in KiB."""
    values: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def reset_peak_rss() -> bool:
    """Start VmHWM again from the current RSS (Linux ≥ 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


class LagProbe:
    """Sleeps 10 ms again and again on the loop and records how late it woke."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.samples = []
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="lag-probe")

    def take(self) -> list[float]:
        samples, self.samples = self.samples, []
        return samples

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(PROBE_INTERVAL)
            self.samples.append(max(0.0, loop.time() - before - PROBE_INTERVAL))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def serve(handle: Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]) -> None:
    """Answer commands until ``{"cmd": "quit"}`` or stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        command = json.loads(line)
        if command.get("cmd") == "quit":
            reply({"ok": True})
            return
        try:
            answer = await handle(command)
        except Exception as exc:
            reply({"ok": False, "error": repr(exc)})
            continue
        reply({"ok": True, **(answer or {})})


class Meter:
    """CPU, loop lag and peak memory over one measured window; with a step timer
    (``bench._steps``), the wall time of each step of the jobs in it too."""

    def __init__(self, steps: StepTimer | None = None) -> None:
        self.probe = LagProbe()
        self.steps = steps
        self._cpu0 = 0.0

    async def handle(self, command: dict[str, Any]) -> dict[str, Any] | None:
        cmd = command.get("cmd")
        if cmd == "begin":
            reset_peak_rss()
            self.probe.start()
            if self.steps is not None:
                self.steps.take()
            self._cpu0 = cpu_seconds()
            return {"rss_kib": memory_kib()}
        if cmd == "end":
            cpu = cpu_seconds() - self._cpu0
            ended = {"cpu": cpu, "lag": self.probe.take(), "rss_kib": memory_kib()}
            if self.steps is not None:
                ended["steps"] = self.steps.take()
            return ended
        if cmd == "memory":
            return {"rss_kib": memory_kib()}
        return None
