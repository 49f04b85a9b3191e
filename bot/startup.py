"""Start-up checks: the mistakes an operator makes on day one, found before the bot
connects or pays for anything, each told in one line that names the setting to fix.

Every command of ``python -m bot`` goes through here, so a wrong token, an
unusable ``DATA_DIR`` or an unreachable PostgreSQL reads the same whichever
command met it, and ends with a documented exit status instead of a traceback:

- ``EXIT_CONFIG`` (2): a setting or argument is wrong; running again will not help.
- ``EXIT_UNAVAILABLE`` (3): a service the bot needs (PostgreSQL) cannot be reached
  now; running again later may work. Discord is waited for instead, since the bot
  cannot do anything else and networks come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import socket
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.config import Settings
from bot.errors import BotError, ConfigError

log = logging.getLogger("bot.startup")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_UNAVAILABLE = 0, 1, 2, 3

# Longest wait between two attempts to reach Discord at start.
DISCORD_RETRY_MAX = 60.0
DISCORD_RETRY_FIRST = 1.0

# Settings whose prefix is the bot's own: an unknown name with one of these is a typo,
# wherever it is set. Generic prefixes (HTTP_, LOG_, DATA_) are left alone, since
# other programs' variables share them; close misspellings are caught anyway.
_OWN_PREFIXES = (
    "DISCORD_",
    "DEV_GUILD",
    "SHARD_",
    "MODELSLAB_",
    "NANOBANANA_",
    "PROVIDER_",
    "DOWNLOAD_",
    "IMAGE_",
    "DATABASE_",
    "DEFAULT_POOL",
    "DEFAULT_USER",
    "METRICS_",
)


# What README's invite step ticks: View Channels, Send Messages, Embed Links,
# Attach Files, Read Message History.
INVITE_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16)


class ServiceUnavailable(BotError):
    """A service the bot needs cannot be reached now; trying again later may work."""


# --- Settings ----------------------------------------------------------------


def known_settings() -> frozenset[str]:
    return frozenset(name.upper() for name in Settings.model_fields)


def unknown_settings(env_file: str | Path | None, environ: Mapping[str, str]) -> list[str]:
    """One line per variable that looks meant for the bot but is no setting of it."""
    known = known_settings()
    sources: list[tuple[str, Iterable[str]]] = []
    if env_file is not None and Path(env_file).is_file():
        from dotenv import dotenv_values

        sources.append((str(Path(env_file).resolve()), dotenv_values(env_file).keys()))
    sources.append(("the environment", environ.keys()))
    lines = []
    seen = set()
    for source, names in sources:
        for raw in names:
            name = raw.upper()
            if name in known or name in seen:
                continue
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
            if not close and not name.startswith(_OWN_PREFIXES):
                continue
            seen.add(name)
            hint = f"did you mean {close[0]}?" if close else "remove it or check its spelling"
            lines.append(f"{raw} (in {source}): not a setting of the bot; {hint}")
    return lines


def provider_problems(settings: Settings) -> list[str]:
    """A PROVIDER_* that routes a command to a provider whose key is not set."""
    configured = settings.configured_providers()
    problems = []
    for name in ("provider_text", "provider_edit", "provider_blend"):
        chosen = getattr(settings, name)
        if chosen is not None and chosen not in configured:
            others = [p for p in configured if p != chosen]
            instead = f" or set {name.upper()}={others[0]}" if others else ""
            problems.append(
                f"{name.upper()}: names {chosen}, but {chosen.upper()}_API_KEY is not set; "
                f"set that key{instead}"
            )
    return problems


def bot_problems(settings: Settings) -> list[str]:
    """What must be set before the Discord bot can run."""
    problems = []
    token = settings.discord_token
    if token is None or not token.get_secret_value():
        field = Settings.model_fields["discord_token"]
        problems.append(f"DISCORD_TOKEN: not set; set it to {field.description}")
    if not settings.configured_providers():
        problems.append(
            "MODELSLAB_API_KEY or NANOBANANA_API_KEY: neither is set; "
            "set at least one provider's API key"
        )
    return problems + provider_problems(settings)


def require_bot_settings(settings: Settings) -> None:
    problems = bot_problems(settings)
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError("Missing settings:\n" + "\n".join(f"  {p}" for p in problems))


# --- Files -------------------------------------------------------------------


def _why(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def directory_problem(path: Path) -> str | None:
    """Why ``path`` cannot be (created as) a writable directory, or None.

    Tried for real, not guessed from permission bits (root passes every access()
    test, and a read-only mount fails none): the missing folders are created, a
    file is written, and whatever the check created is removed again.
    """
    path = path.absolute()
    if path.exists() and not path.is_dir():
        return f"{path} exists but is not a directory"
    created: list[Path] = []
    try:
        for folder in reversed([path, *path.parents]):
            if not folder.exists():
                folder.mkdir(mode=0o700)
                created.append(folder)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        verb = "write in" if not created and path.exists() else "create"
        return f"cannot {verb} {path}: {_why(exc)}"
    finally:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
    return None


def data_dir_problems(settings: Settings) -> list[str]:
    problems = []
    problem = directory_problem(settings.data_dir)
    if problem is not None:
        problems.append(f"DATA_DIR: {problem}; set DATA_DIR to a writable directory")
    if settings.database_url is not None and settings.database_url.startswith("sqlite:///"):
        folder = settings.sqlite_path.absolute().parent
        problem = directory_problem(folder)
        if problem is not None:
            problems.append(f"DATABASE_URL: {problem}; point it at a writable place")
    return problems


def prepare_data_dir(settings: Settings) -> None:
    """``bot.datadir.prepare_data_dir``, with its failures told as settings to fix."""
    from bot.datadir import prepare_data_dir as prepare

    try:
        prepare(settings)
    except OSError as exc:
        problems = data_dir_problems(settings)
        if problems:
            raise ConfigError(problems[0]) from None
        where = exc.filename or settings.data_dir
        raise ConfigError(
            f"DATA_DIR: cannot use {Path(where).absolute()}: {_why(exc)}; "
            "set DATA_DIR to a writable directory"
        ) from None


# --- PostgreSQL --------------------------------------------------------------


def database_error(exc: BaseException, url: str, setting: str = "DATABASE_URL") -> BotError:
    """An error of connecting to PostgreSQL as one line naming the setting (or argument)
    that holds the URL."""
    import asyncpg  # type: ignore[import-untyped]

    from bot.migrate import describe_database

    cause = exc.__cause__ if exc.__cause__ is not None else exc
    where = describe_database(url)
    if isinstance(cause, ValueError):
        return ConfigError(f"{setting}: not a usable postgresql:// URL ({where})")
    config_errors = {
        asyncpg.InvalidPasswordError: "the server refused the user name or password",
        asyncpg.InvalidAuthorizationSpecificationError: "the server refused the user name",
        asyncpg.InvalidCatalogNameError: "that database does not exist",
    }
    for kind, reason in config_errors.items():
        if isinstance(cause, kind):
            return ConfigError(f"{setting}: cannot use {where}: {reason}; correct {setting}")
    if isinstance(cause, socket.gaierror):
        reason = "its host name is not known"
    elif isinstance(cause, ConnectionRefusedError):
        reason = "connection refused"
    elif isinstance(cause, TimeoutError):
        reason = "no answer in time"
    elif isinstance(cause, OSError):
        reason = _why(cause)
    else:
        reason = str(cause) or type(cause).__name__
    return ServiceUnavailable(
        f"{setting}: cannot connect to {where} ({reason}); start the server or correct {setting}"
    )


async def check_database(settings: Settings) -> None:
    """Connect once to a PostgreSQL DATABASE_URL; SQLite needs only DATA_DIR."""
    from bot.migrate import DatabaseUnavailable, is_postgres_url, pg_connect

    url = settings.database_url
    if url is None or not is_postgres_url(url):
        return
    try:
        conn = await pg_connect(url, timeout=settings.http_connect_timeout)
    except DatabaseUnavailable as exc:
        raise database_error(exc, url) from None
    await conn.close()


# --- Discord -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiscordIdentity:
    user_name: str
    user_id: int
    application_id: int


def _discord_base(settings: Settings) -> str:
    import discord

    if settings.discord_api_base_url is not None:
        return str(settings.discord_api_base_url).rstrip("/")
    return discord.http.Route.BASE


def _network_reason(exc: BaseException) -> str:
    import aiohttp
    import discord

    if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(
        getattr(exc, "os_error", None), socket.gaierror
    ):
        return "its host name is not known"
    if isinstance(exc, discord.DiscordServerError):
        return f"Discord answered {exc.status}"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    os_error = getattr(exc, "os_error", exc)
    if isinstance(os_error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror.lower()
    return str(exc) or type(exc).__name__


def refused_token_message(token: str) -> str:
    if token.strip().lower().startswith("bot "):
        return 'DISCORD_TOKEN: Discord refused it; give the token alone, without "Bot " in front'
    return (
        "DISCORD_TOKEN: Discord refused this token (401 Unauthorized); copy the bot token "
        "again from the developer portal (your application > Bot > Reset Token; not the "
        "client secret or the public key)"
    )


async def verify_discord(settings: Settings, *, wait: bool) -> DiscordIdentity:
    """Log in over REST as the bot will, and check DEV_GUILD_ID if set.

    With ``wait`` an unreachable Discord is tried again with back-off, saying so on
    each attempt, until it answers; without, it raises ServiceUnavailable.
    """
    import aiohttp
    import discord

    token = settings.discord_token
    if token is None or not token.get_secret_value():
        raise ConfigError("DISCORD_TOKEN: not set; set it to the bot token (Bot > Token)")
    from bot.app import configure_endpoints

    configure_endpoints(settings)
    delay = DISCORD_RETRY_FIRST
    while True:
        http = discord.http.HTTPClient(asyncio.get_running_loop())
        try:
            user = await http.static_login(token.get_secret_value().strip())
            application = await http.application_info()
            identity = DiscordIdentity(
                user_name=str(user.get("username", "?")),
                user_id=int(user["id"]),
                application_id=int(application["id"]),
            )
            if settings.dev_guild_id is not None:
                await _check_dev_guild(http, identity, settings.dev_guild_id)
            return identity
        except discord.LoginFailure:
            raise ConfigError(refused_token_message(token.get_secret_value())) from None
        except (OSError, aiohttp.ClientError, TimeoutError, discord.DiscordServerError) as exc:
            reason = _network_reason(exc)
            if not wait:
                raise ServiceUnavailable(
                    f"Discord: cannot reach {_discord_base(settings)} ({reason}); check the "
                    "network (or DISCORD_API_BASE_URL, if you set it)"
                ) from None
            log.warning(
                "cannot reach Discord at %s (%s); trying again in %.0f s",
                _discord_base(settings),
                reason,
                delay,
            )
        finally:
            await http.close()
        await asyncio.sleep(delay)
        delay = min(delay * 2, DISCORD_RETRY_MAX)


def invite_url(application_id: int, guild_id: int | None = None) -> str:
    import discord

    return discord.utils.oauth_url(
        application_id,
        permissions=discord.Permissions(INVITE_PERMISSIONS),
        guild=discord.Object(guild_id) if guild_id is not None else discord.utils.MISSING,
        scopes=("bot", "applications.commands"),
    )


async def _check_dev_guild(http: Any, identity: DiscordIdentity, guild_id: int) -> None:
    import discord

    try:
        await http.get_guild_commands(identity.application_id, guild_id)
    except (discord.Forbidden, discord.NotFound):
        raise ConfigError(dev_guild_message(identity.application_id, guild_id)) from None


def dev_guild_message(application_id: int | None, guild_id: int) -> str:
    invite = (
        f"; invite it with {invite_url(application_id, guild_id)}"
        if application_id is not None
        else "; invite it with the scopes bot and applications.commands"
    )
    return (
        f"DEV_GUILD_ID: the bot may not add commands to server {guild_id}: it is not in "
        f"that server, or was invited without the applications.commands scope{invite} "
        "or unset DEV_GUILD_ID"
    )


async def start_bot(settings: Settings, *, sync_only: bool = False) -> int:
    """Wait for Discord, check the token and DEV_GUILD_ID, then run the bot; what
    Discord refuses later (a token revoked meanwhile) is still told as a setting."""
    import discord

    from bot.app import run_bot

    await check_database(settings)
    identity = await verify_discord(settings, wait=True)
    log.info("Discord accepted the token of %s (%d)", identity.user_name, identity.user_id)
    try:
        return await run_bot(settings, sync_only=sync_only)
    except discord.LoginFailure:
        secret = settings.discord_token.get_secret_value() if settings.discord_token else ""
        raise ConfigError(refused_token_message(secret)) from None
    except discord.Forbidden as exc:
        if settings.dev_guild_id is not None and exc.code == 50001:
            raise ConfigError(
                dev_guild_message(identity.application_id, settings.dev_guild_id)
            ) from None
        raise


async def clear_guild_commands(settings: Settings, guild_id: int) -> int:
    """Remove the commands registered to one server (a DEV_GUILD_ID sync), leaving the
    global ones: the cure for every command showing twice there. Returns how many."""
    import discord

    identity = await verify_discord(settings, wait=False)
    http = discord.http.HTTPClient(asyncio.get_running_loop())
    try:
        token = settings.discord_token
        assert token is not None  # verify_discord checked it
        await http.static_login(token.get_secret_value().strip())
        try:
            existing = await http.get_guild_commands(identity.application_id, guild_id)
            await http.bulk_upsert_guild_commands(identity.application_id, guild_id, [])
        except (discord.Forbidden, discord.NotFound):
            raise ConfigError(
                f"--clear-guild: the bot may not manage commands in server {guild_id}: it is "
                "not in that server, or was invited without the applications.commands scope"
            ) from None
    finally:
        await http.close()
    return len(existing)
