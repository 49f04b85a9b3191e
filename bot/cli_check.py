"""``python -m bot check``: everything an operator can get wrong before the first
start, found in one go (not one problem per run), with absolute paths.

``--online`` also does what the start does first: logs in to Discord with the
token, checks DEV_GUILD_ID and connects to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from bot.config import Settings
from bot.errors import BotError, ConfigError
from bot.migrate import describe_database, is_postgres_url
from bot.startup import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    bot_problems,
    check_database,
    data_dir_problems,
    unknown_settings,
    verify_discord,
)


def run_check(settings: Settings, *, env_file: str | None, online: bool) -> int:
    if env_file is not None and env_file != os.devnull:
        path = Path(env_file).absolute()
        found = "" if path.is_file() else " (not found: the environment only)"
        print(f"Settings file: {path}{found}")
    providers = settings.configured_providers()
    print(f"Providers configured: {', '.join(providers) if providers else 'none'}")
    if is_postgres_url(settings.database_url):
        database = describe_database(settings.database_url)
    else:
        database = f"SQLite file {settings.sqlite_path.absolute()}"
    print(f"Database: {database}")
    print(f"Data directory: {settings.data_dir.absolute()}")

    problems = [
        *bot_problems(settings),
        *data_dir_problems(settings),
        *unknown_settings(env_file, os.environ),
    ]
    if problems:
        _report(problems)
        return EXIT_CONFIG
    if online:
        try:
            identity = asyncio.run(_online(settings))
        except ConfigError as error:
            _report([error.user_message])
            return EXIT_CONFIG
        except BotError as error:
            _report([error.user_message])
            return EXIT_UNAVAILABLE
        print(f"Discord: the token logs in as {identity}")
        if settings.dev_guild_id is not None:
            print(f"DEV_GUILD_ID: the bot may add commands to server {settings.dev_guild_id}")
        if is_postgres_url(settings.database_url):
            print("Database: connected")
    print("Settings are valid. Ready to run: python -m bot")
    return EXIT_OK


async def _online(settings: Settings) -> str:
    await check_database(settings)
    identity = await verify_discord(settings, wait=False)
    return f"{identity.user_name} (id {identity.user_id})"


def _report(problems: list[str]) -> None:
    count = len(problems)
    print(f"{count} problem{'s' if count != 1 else ''} to fix:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
