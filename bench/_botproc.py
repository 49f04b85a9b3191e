"""The real bot in a process of its own: ``python -m bench._botproc SETTINGS_JSON LOG_FILE``.

Started the way ``imagebot run`` starts it (``open_bot`` then ``bot.start``), with
logging at INFO into LOG_FILE, pointed at the emulators by its settings. Once
connected and its commands synced it prints ``{"ready": true}`` and then answers
the orchestrator's commands (see ``bench._child``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import Any

from bench._child import Meter, reply, run, serve


async def main(settings_json: str, log_file: str) -> None:
    from bot.app import open_bot
    from bot.config import Settings
    from bot.logs import setup_logging

    values: dict[str, Any] = json.loads(settings_json)
    settings = Settings(_env_file=None, **values)
    with open(log_file, "a", encoding="utf-8") as log_stream:  # noqa: ASYNC230 - at start-up
        setup_logging(settings, stream=log_stream)
        async with open_bot(settings) as bot:
            bot.freeze_heap_when_ready = True  # as run_bot does
            token = settings.discord_token
            assert token is not None
            task = asyncio.create_task(bot.start(token.get_secret_value()))
            ready = asyncio.create_task(bot.wait_until_ready())
            await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()
                raise RuntimeError("the bot stopped before it was ready")
            if not ready.done():
                raise RuntimeError("the bot did not become ready within 30 s")
            await bot.sync_commands()
            steps = None
            if os.environ.get("BENCH_STEPS") == "1":  # python -m bench --steps
                from bench._steps import StepTimer

                steps = StepTimer()
                steps.install()
            meter = Meter(steps)
            reply({"ready": True})
            try:
                await serve(meter.handle)
            finally:
                await meter.probe.stop()
                await bot.close()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 10)


if __name__ == "__main__":
    from bot.malloc import limit_arenas

    limit_arenas()  # as `imagebot run` does, before any thread starts
    run(main(sys.argv[1], sys.argv[2]))
