"""``python -m bot``: run the bot (default), check settings, generate locally, manage quotas."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from bot.config import Settings, load_settings
from bot.errors import ConfigError
from bot.logs import setup_logging
from bot.startup import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    ServiceUnavailable,
    check_database,
    prepare_data_dir,
    require_bot_settings,
)

EXIT_USAGE = EXIT_CONFIG


def build_parser() -> argparse.ArgumentParser:
    from bot.cli_generate import add_generate_parser
    from bot.migrate_data import add_migrate_parsers
    from bot.quota.cli import add_quota_parser

    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="An image-generation Discord bot (ModelsLab, Nano Banana Pro).",
        epilog="Exit codes: 0 done; 1 the work failed (or an unexpected error); 2 a setting "
        "or argument to fix, named on stderr; 3 a service (PostgreSQL, or Discord for "
        "check --online) unreachable, try again later.",
    )
    parser.add_argument(
        "--env-file", help="settings file to read (default: .env, when there is one)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", help="run the Discord bot (the default)")
    check = commands.add_parser("check", help="validate the settings and say what is configured")
    check.add_argument(
        "--online",
        action="store_true",
        help="also log in to Discord, check DEV_GUILD_ID and connect to the database",
    )
    sync = commands.add_parser("sync", help="register the slash commands with Discord, then exit")
    sync.add_argument(
        "--clear-guild",
        type=int,
        metavar="SERVER_ID",
        help="instead, remove the commands registered to one server (after development "
        "with DEV_GUILD_ID), leaving the global ones",
    )
    commands.add_parser("health", help="exit 0 if the running bot's heartbeat is fresh")
    add_generate_parser(commands)
    add_quota_parser(commands)
    add_migrate_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "run"
    try:
        args.env_file = _env_file(args.env_file)
        settings = load_settings(args.env_file)
        setup_logging(settings)
        return _dispatch(command, args, settings)
    except ConfigError as error:
        print(error.user_message, file=sys.stderr)
        return EXIT_USAGE
    except ServiceUnavailable as error:
        print(error.user_message, file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return EXIT_FAILED


def _env_file(given: str | None) -> str:
    """.env is optional (Docker passes settings in the environment); a file named
    on the command line is not: a typo there would run on defaults unnoticed."""
    if given is None:
        return ".env"
    if given != os.devnull and not os.path.isfile(given):
        raise ConfigError(f"--env-file {os.path.abspath(given)}: no such file")
    return given


def _dispatch(command: str, args: argparse.Namespace, settings: Settings) -> int:
    if command == "check":
        from bot.cli_check import run_check

        return run_check(settings, env_file=args.env_file, online=args.online)
    if command == "health":
        return _health(settings)
    if command == "generate":
        from bot.cli_generate import run_generate

        prepare_data_dir(settings)
        asyncio.run(check_database(settings))
        return asyncio.run(run_generate(args, settings))
    if command == "quota":
        prepare_data_dir(settings)
        asyncio.run(check_database(settings))
        from bot.quota.cli import run_quota_command

        return asyncio.run(run_quota_command(args, settings))
    if command in ("migrate", "migrate-data"):
        from bot.migrate_data import run_migrate_command

        if command == "migrate":
            prepare_data_dir(settings)
            asyncio.run(check_database(settings))
        return asyncio.run(run_migrate_command(args, settings))
    require_bot_settings(settings)
    if command == "sync" and args.clear_guild is not None:
        from bot.startup import clear_guild_commands

        removed = asyncio.run(clear_guild_commands(settings, args.clear_guild))
        print(f"removed {removed} command(s) registered to server {args.clear_guild}")
        return EXIT_OK
    prepare_data_dir(settings)
    from bot.malloc import limit_arenas
    from bot.startup import start_bot, unknown_settings

    for line in unknown_settings(args.env_file, os.environ):
        logging.getLogger("bot.startup").warning("%s", line)
    limit_arenas()  # before the bot starts any thread
    return asyncio.run(start_bot(settings, sync_only=command == "sync"))


HEARTBEAT_MAX_AGE = 120.0


def _health(settings: Settings) -> int:
    """For Docker's HEALTHCHECK: the running bot touches the heartbeat file."""
    import time

    heartbeat = settings.data_dir / "heartbeat"
    try:
        age = time.time() - heartbeat.stat().st_mtime
    except OSError:
        print(f"unhealthy: {heartbeat} is missing (is the bot running?)", file=sys.stderr)
        return EXIT_FAILED
    if age > HEARTBEAT_MAX_AGE:
        print(
            f"unhealthy: last heartbeat {age:.0f} s ago in {heartbeat}; the bot has stopped "
            "or its event loop is stuck",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print("healthy")
    return EXIT_OK
