"""``python -m bot quota ...``: the operator's shell commands for the ledger.

``bot/cli.py`` calls ``add_quota_parser(subparsers)`` while building its parser
and ``await run_quota_command(args, settings)`` when ``args.command == "quota"``.
Exit status: 0 done, 1 not found (``job``, ``unban`` with nothing to lift), 2 a
usage error, told in one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import getpass
import io
import json
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bot.config import Settings
from bot.errors import BotError
from bot.quota.models import Balance, Ban, GuildConfig, UsageBy
from bot.quota.periods import PERIOD_WORDS, PERIODS, Period, period_bounds, zone
from bot.quota.service import QuotaService, open_ledger


class _UsageError(Exception):
    """A bad argument value argparse could not catch; exit status 2."""


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _snowflake(text: str) -> str:
    """A Discord id as the ledger stores it: Discord's ids are 64-bit numbers
    made since 2015, so 17 to 20 digits. Catches a name, a mention or a typo
    before it silently matches nothing."""
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit() and 17 <= len(digits) <= 20):
        raise argparse.ArgumentTypeError(
            f"not a Discord id: {text!r} (17 to 20 digits; in Discord, turn on Developer "
            "Mode and use Copy ID)"
        )
    if int(digits) >= 2**64:
        raise argparse.ArgumentTypeError(f"not a Discord id: {text!r} (too large)")
    return digits


def _hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of hours: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _limit_group(parser: argparse.ArgumentParser, *, removable: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--credits", type=_non_negative, help="credits per period")
    group.add_argument("--unlimited", action="store_true", help="no limit")
    if removable:
        group.add_argument("--remove", action="store_true", help="drop this limit")


def add_quota_parser(subparsers: Any) -> None:
    """Register ``quota`` and its commands on ``subparsers`` (from
    ``ArgumentParser.add_subparsers``)."""
    quota = subparsers.add_parser(
        "quota",
        help="show and change guild quotas",
        description="Show and change the per-guild credit quotas.",
    )
    commands = quota.add_subparsers(dest="quota_command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name, help=help_text, description=help_text
        )
        return parser

    def actor(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--actor", help="who is doing this, for the record (default: shell:$USER)"
        )

    show = command("show", "show a guild's credits and bans (and a member's)")
    show.add_argument("--guild", required=True, type=_snowflake)
    show.add_argument("--user", type=_snowflake)
    show.add_argument(
        "--role",
        action="append",
        default=[],
        type=_snowflake,
        help="a role the member has (repeatable)",
    )
    show.add_argument("--json", action="store_true", help="print JSON")

    set_pool = command("set-pool", "set a guild's pool of credits per period")
    set_pool.add_argument("--guild", required=True, type=_snowflake)
    set_pool.add_argument("--credits", required=True, type=_non_negative)
    set_pool.add_argument("--period", choices=PERIODS)
    set_pool.add_argument("--tz", help="IANA time zone the period resets in, e.g. Europe/Paris")

    user_default = command("user-default", "set the allowance of members with no other limit")
    user_default.add_argument("--guild", required=True, type=_snowflake)
    _limit_group(user_default, removable=False)

    role_limit = command("role-limit", "set a role's allowance per period")
    role_limit.add_argument("--guild", required=True, type=_snowflake)
    role_limit.add_argument("--role", required=True, type=_snowflake)
    _limit_group(role_limit, removable=True)

    user_limit = command("user-limit", "set one member's allowance, beating their roles")
    user_limit.add_argument("--guild", required=True, type=_snowflake)
    user_limit.add_argument("--user", required=True, type=_snowflake)
    _limit_group(user_limit, removable=True)

    grant = command("grant", "give extra credits for the current period")
    grant.add_argument("--guild", required=True, type=_snowflake)
    grant.add_argument("--credits", required=True, type=_positive)
    grant.add_argument("--user", type=_snowflake, help="a member; without it the guild pool")
    grant.add_argument("--reason")
    actor(grant)

    reset = command("reset", "zero the current period's usage of a guild or a member")
    reset.add_argument("--guild", required=True, type=_snowflake)
    reset.add_argument("--user", type=_snowflake)
    reset.add_argument("--reason")
    actor(reset)

    ban = command("ban", "stop a member from generating until a time")
    ban.add_argument("--guild", required=True, type=_snowflake)
    ban.add_argument("--user", required=True, type=_snowflake)
    until = ban.add_mutually_exclusive_group(required=True)
    until.add_argument("--until", help="ISO date-time; without an offset, in the guild's time zone")
    until.add_argument("--hours", type=_hours, help="hours from now")
    ban.add_argument("--reason", required=True)
    actor(ban)

    unban = command("unban", "lift a member's ban")
    unban.add_argument("--guild", required=True, type=_snowflake)
    unban.add_argument("--user", required=True, type=_snowflake)
    actor(unban)

    usage = command("usage", "credits used by user, channel or day")
    usage.add_argument("--guild", required=True, type=_snowflake)
    usage.add_argument("--by", choices=("user", "channel", "day"), default="user")
    usage.add_argument(
        "--since", help="first day, YYYY-MM-DD in the guild's time zone (default: period start)"
    )
    usage.add_argument("--until", help="last day included, YYYY-MM-DD (default: period end)")
    usage.add_argument("--json", action="store_true", help="print JSON")

    export = command("export", "write the ledger (reservations, grants, resets) as CSV")
    export.add_argument("--guild", type=_snowflake, help="one guild; without it every guild")
    export.add_argument("--out", type=Path, help="a file to write; without it stdout")

    job = command("job", "who generated a job (by job id, interaction id or reservation id)")
    job.add_argument("ref")
    job.add_argument("--json", action="store_true", help="print JSON")


def _actor(args: argparse.Namespace) -> str:
    given: str | None = getattr(args, "actor", None)
    if given:
        return given
    try:
        return f"shell:{getpass.getuser()}"
    except (KeyError, OSError):
        return "shell"


def _parse_until(text: str, tz: ZoneInfo) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _UsageError(f"--until: not an ISO date-time: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value


def _parse_day(option: str, text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise _UsageError(f"{option}: not a date YYYY-MM-DD: {text!r}") from None


class _Clock:
    """Shows instants in a guild's time zone, the one its periods reset in."""

    def __init__(self, config: GuildConfig) -> None:
        self.name = config.timezone
        self.tz = zone(config.timezone)
        self.period: Period = config.period

    def local(self, when: datetime) -> datetime:
        return when.astimezone(self.tz)

    def text(self, when: datetime) -> str:
        return f"{self.local(when):%Y-%m-%d %H:%M} {self.name}"

    def iso(self, when: datetime) -> str:
        return self.local(when).isoformat()

    @property
    def this_period(self) -> str:
        return PERIOD_WORDS[self.period]


async def _clock(ledger: QuotaService, guild_id: str) -> _Clock:
    return _Clock(await ledger.guild_config(guild_id))


def _describe(name: str, balance: Balance, clock: _Clock) -> str:
    held = f"{balance.reserved} held by jobs in progress"
    resets = f"resets {clock.text(balance.resets_at)}"
    if balance.limit is None:
        return (
            f"{name}: unlimited credits {clock.this_period} ({balance.used} used, {held}; {resets})"
        )
    return (
        f"{name}: {balance.remaining} of {balance.limit} credits left {clock.this_period} "
        f"({balance.used} used, {held}; {resets})"
    )


def _describe_ban(ban: Ban, clock: _Clock) -> str:
    return (
        f"user {ban.user_id}: banned until {clock.text(ban.until)} "
        f"(reason: {ban.reason}; by {ban.banned_by} on {clock.text(ban.created_at)})"
    )


def _ban_json(ban: Ban, clock: _Clock) -> dict[str, Any]:
    return {
        "user_id": ban.user_id,
        "until": clock.iso(ban.until),
        "reason": ban.reason,
        "banned_by": ban.banned_by,
        "created_at": clock.iso(ban.created_at),
    }


def _limit_value(args: argparse.Namespace) -> int | None:
    return None if args.unlimited else int(args.credits)


def _credits_per(value: int | None, period: str) -> str:
    return (
        f"unlimited credits per {period}"
        if value is None
        else f"{_n(value, 'credit')} per {period}"
    )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _print(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


async def _show(args: argparse.Namespace, ledger: QuotaService) -> int:
    clock = await _clock(ledger, args.guild)
    balances = await ledger.balance(args.guild, args.user, tuple(args.role))
    if args.user is not None:
        ban = await ledger.active_ban(args.guild, args.user)
        bans = [] if ban is None else [ban]
    else:
        bans = await ledger.active_bans(args.guild)
    if args.json:
        data = balances.to_json()
        for part in ("guild", "user"):
            if part in data:
                data[part]["resets_at"] = clock.iso(datetime.fromisoformat(data[part]["resets_at"]))
        data["timezone"] = clock.name
        data["bans"] = [_ban_json(ban, clock) for ban in bans]
        _print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    _print(_describe(f"guild {args.guild}", balances.guild, clock))
    if balances.user is not None:
        _print(_describe(f"user {args.user}", balances.user, clock))
    if bans:
        for ban in bans:
            _print(_describe_ban(ban, clock))
    elif args.user is not None:
        _print(f"user {args.user}: not banned")
    else:
        _print("no member is banned")
    return 0


async def _run(args: argparse.Namespace, ledger: QuotaService) -> int:
    name: str = args.quota_command
    if name == "show":
        return await _show(args, ledger)
    if name == "set-pool":
        config = await ledger.set_pool(args.guild, args.credits, args.period, args.tz)
        _print(
            f"guild {config.guild_id}: pool of {_credits_per(config.pool_credits, config.period)}"
            f", resetting at midnight {config.timezone}"
        )
        return 0
    if name == "user-default":
        config = await ledger.set_user_default(args.guild, _limit_value(args))
        _print(
            f"guild {config.guild_id}: members get "
            f"{_credits_per(config.user_default, config.period)} by default"
        )
        return 0
    if name in ("role-limit", "user-limit"):
        is_role = name == "role-limit"
        who = f"role {args.role}" if is_role else f"user {args.user}"
        if args.remove:
            if is_role:
                removed = await ledger.remove_role_limit(args.guild, args.role)
            else:
                removed = await ledger.remove_user_limit(args.guild, args.user)
            _print(f"{who}: " + ("limit removed" if removed else "had no limit"))
            return 0
        if is_role:
            await ledger.set_role_limit(args.guild, args.role, _limit_value(args))
        else:
            await ledger.set_user_limit(args.guild, args.user, _limit_value(args))
        clock = await _clock(ledger, args.guild)
        _print(f"{who}: {_credits_per(_limit_value(args), clock.period)}")
        return 0
    if name == "grant":
        grant = await ledger.grant(
            args.guild, args.credits, user_id=args.user, by=_actor(args), reason=args.reason
        )
        clock = await _clock(ledger, args.guild)
        target = f"user {grant.user_id}" if grant.user_id else f"guild {grant.guild_id} pool"
        _print(f"granted {_n(grant.credits, 'extra credit')} to {target} for {clock.this_period}")
        return 0
    if name == "reset":
        await ledger.reset(args.guild, args.user, by=_actor(args), reason=args.reason)
        clock = await _clock(ledger, args.guild)
        target = f"user {args.user}" if args.user else f"guild {args.guild}"
        _print(f"{target}: credits used {clock.this_period} reset to 0")
        return 0
    if name == "ban":
        clock = await _clock(ledger, args.guild)
        now = ledger.now()
        until = (
            now + timedelta(hours=args.hours)
            if args.hours is not None
            else _parse_until(args.until, clock.tz)
        )
        if until <= now:
            raise _UsageError("--until: must be in the future")
        ban = await ledger.ban(args.guild, args.user, until, args.reason, _actor(args))
        _print(f"user {ban.user_id} banned until {clock.text(ban.until)}")
        return 0
    if name == "unban":
        lifted = await ledger.unban(args.guild, args.user, _actor(args))
        _print(f"user {args.user}: " + ("ban lifted" if lifted else "was not banned"))
        return 0 if lifted else 1
    if name == "usage":
        return await _usage(args, ledger)
    if name == "export":
        return await _export(args, ledger)
    if name == "job":
        info = await ledger.job_info(args.ref)
        if info is None:
            sys.stderr.write(f"no job, interaction or reservation {args.ref!r} in the ledger\n")
            return 1
        clock = await _clock(ledger, info.guild_id)
        if args.json:
            data = info.to_json()
            data["created_at"] = clock.iso(info.created_at)
            data["updated_at"] = clock.iso(info.updated_at)
            _print(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            charged = info.cost_settled if info.cost_settled is not None else "-"
            _print(
                f"{clock.text(info.created_at)} guild {info.guild_id} "
                f"channel {info.channel_id or '-'} user {info.user_id}: {info.state}, "
                f"{info.cost_reserved} credits held, {charged} charged\n"
                f"prompt: {info.prompt or ''}"
            )
        return 0
    raise _UsageError(f"unknown quota command {name!r}")


async def _export(args: argparse.Namespace, ledger: QuotaService) -> int:
    data = await ledger.export_csv(args.guild)
    if args.out is None:
        sys.stdout.write(data)
        return 0
    out: Path = args.out.resolve()
    try:
        await asyncio.to_thread(out.write_text, data, encoding="utf-8")
    except OSError as exc:
        raise _UsageError(f"--out: cannot write {out}: {exc.strerror or exc}") from None
    # Prompts may span lines: count records, not lines.
    rows = sum(1 for _ in csv.reader(io.StringIO(data))) - 1
    what = f"guild {args.guild}" if args.guild else "every guild"
    _print(f"wrote {_n(rows, 'ledger row')} of {what} (reservations, grants, resets) to {out}")
    return 0


async def _usage(args: argparse.Namespace, ledger: QuotaService) -> int:
    clock = await _clock(ledger, args.guild)
    start, end = period_bounds(clock.period, clock.name, ledger.now())
    if args.since:
        day = _parse_day("--since", args.since)
        start = datetime.combine(day, time(0), tzinfo=clock.tz).astimezone(UTC)
    if args.until:
        day = _parse_day("--until", args.until) + timedelta(days=1)
        end = datetime.combine(day, time(0), tzinfo=clock.tz).astimezone(UTC)
    if end <= start:
        raise _UsageError(
            "--until: must not be before --since (without --until: the end of the current period)"
        )
    by: UsageBy = args.by
    rows = await ledger.usage(args.guild, start, end, by)
    if args.json:
        _print(json.dumps([row.to_json() for row in rows], indent=2))
        return 0
    _print(f"guild {args.guild}, {clock.text(start)} to {clock.text(end)}:")
    if not rows:
        _print("no usage")
        return 0
    width = max(len(by), *(len(row.key) for row in rows))
    _print(
        f"{by:<{width}}  {'jobs':>6}  {'credits':>8}  {'in progress':>11}  {'refunded jobs':>13}"
    )
    for row in rows:
        _print(
            f"{row.key:<{width}}  {row.jobs:>6}  {row.credits:>8}  {row.reserved:>11}  "
            f"{row.refunded_jobs:>13}"
        )
    return 0


async def run_quota_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run one ``quota`` command; returns the exit status."""
    try:
        # No sweeper task: a shell command is over in a moment, and opening the
        # ledger already refunded what had expired.
        async with open_ledger(settings, sweep=False) as ledger:
            return await _run(args, ledger)
    except (_UsageError, ValueError) as exc:
        sys.stderr.write(f"quota {args.quota_command}: {exc}\n")
        return 2
    except BotError as exc:
        from bot.cli_text import plain_text

        # The ledger's messages are written for Discord (timestamps, bold).
        sys.stderr.write(f"quota {args.quota_command}: {plain_text(exc.user_message)}\n")
        return 2
