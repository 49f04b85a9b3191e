"""``python -m bot``: run the bot (default), check settings, generate locally, manage quotas."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from bot.config import Settings, load_settings
from bot.datadir import prepare_data_dir
from bot.errors import ConfigError
from bot.logs import setup_logging
from bot.migrate import describe_database

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    from bot.cli_generate import add_generate_parser
    from bot.migrate_data import add_migrate_parsers
    from bot.quota.cli import add_quota_parser

    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="An image-generation Discord bot (ModelsLab, Nano Banana Pro).",
    )
    parser.add_argument("--env-file", default=".env", help="settings file to read (default: .env)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", help="run the Discord bot (the default)")
    commands.add_parser("check", help="validate the settings and say what is configured")
    commands.add_parser("sync", help="register the slash commands with Discord, then exit")
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
        settings = load_settings(args.env_file)
        setup_logging(settings)
        return _dispatch(command, args, settings)
    except ConfigError as error:
        print(error.user_message, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED


def _dispatch(command: str, args: argparse.Namespace, settings: Settings) -> int:
    if command == "check":
        return _check(settings)
    if command == "health":
        return _health(settings)
    if command == "generate":
        from bot.cli_generate import run_generate

        prepare_data_dir(settings)
        return asyncio.run(run_generate(args, settings))
    if command == "quota":
        prepare_data_dir(settings)
        from bot.quota.cli import run_quota_command

        return asyncio.run(run_quota_command(args, settings))
    if command in ("migrate", "migrate-data"):
        from bot.migrate_data import run_migrate_command

        return asyncio.run(run_migrate_command(args, settings))
    _require_bot_settings(settings)
    prepare_data_dir(settings)
    from bot.app import run_bot

    return asyncio.run(run_bot(settings, sync_only=command == "sync"))


def _require_bot_settings(settings: Settings) -> None:
    problems = []
    try:
        settings.require("discord_token")
    except ConfigError as error:
        problems.append(error.user_message.removeprefix("Missing settings:\n"))
    if not settings.configured_providers():
        problems.append(
            "  MODELSLAB_API_KEY or NANOBANANA_API_KEY: neither is set; set at least one "
            "provider's API key"
        )
    if problems:
        raise ConfigError("Missing settings:\n" + "\n".join(problems))


def _check(settings: Settings) -> int:
    print("Settings are valid.")
    providers = settings.configured_providers()
    print(f"Providers configured: {', '.join(providers) if providers else 'none'}")
    print(f"Database: {describe_database(settings.database_url, settings.sqlite_path)}")
    print(f"Data directory: {settings.data_dir}")
    _require_bot_settings(settings)
    print("Ready to run: python -m bot")
    return EXIT_OK


HEARTBEAT_MAX_AGE = 120.0


def _health(settings: Settings) -> int:
    """For Docker's HEALTHCHECK: the running bot touches the heartbeat file."""
    import time

    heartbeat = settings.data_dir / "heartbeat"
    try:
        age = time.time() - heartbeat.stat().st_mtime
    except OSError:
        print(f"unhealthy: {heartbeat} is missing", file=sys.stderr)
        return EXIT_FAILED
    if age > HEARTBEAT_MAX_AGE:
        print(f"unhealthy: last heartbeat {age:.0f} s ago", file=sys.stderr)
        return EXIT_FAILED
    print("healthy")
    return EXIT_OK
