"""``python -m bot quota ...``: the operator's shell commands for the ledger.

``bot/cli.py`` calls ``add_quota_parser(subparsers)`` while building its parser
and ``await run_quota_command(args, settings)`` when ``args.command == "quota"``.
Exit status: 0 done, 1 not found (``job``, ``unban`` with nothing to lift), 2 a
usage error, told in one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from bot.config import Settings
from bot.errors import BotError
from bot.quota.models import Balance, UsageBy
from bot.quota.periods import PERIODS, zone
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

    show = command("show", "show a guild's balance (and a member's)")
    show.add_argument("--guild", required=True)
    show.add_argument("--user")
    show.add_argument(
        "--role", action="append", default=[], help="a role the member has (repeatable)"
    )
    show.add_argument("--json", action="store_true", help="print JSON")

    set_pool = command("set-pool", "set a guild's pool of credits per period")
    set_pool.add_argument("--guild", required=True)
    set_pool.add_argument("--credits", required=True, type=_non_negative)
    set_pool.add_argument("--period", choices=PERIODS)
    set_pool.add_argument("--tz", help="IANA time zone the period resets in, e.g. Europe/Paris")

    user_default = command("user-default", "set the allowance of members with no other limit")
    user_default.add_argument("--guild", required=True)
    _limit_group(user_default, removable=False)

    role_limit = command("role-limit", "set a role's allowance per period")
    role_limit.add_argument("--guild", required=True)
    role_limit.add_argument("--role", required=True)
    _limit_group(role_limit, removable=True)

    user_limit = command("user-limit", "set one member's allowance, beating their roles")
    user_limit.add_argument("--guild", required=True)
    user_limit.add_argument("--user", required=True)
    _limit_group(user_limit, removable=True)

    grant = command("grant", "give extra credits for the current period")
    grant.add_argument("--guild", required=True)
    grant.add_argument("--credits", required=True, type=_positive)
    grant.add_argument("--user", help="a member; without it the guild pool")
    grant.add_argument("--reason")
    actor(grant)

    reset = command("reset", "zero the current period's usage of a guild or a member")
    reset.add_argument("--guild", required=True)
    reset.add_argument("--user")
    reset.add_argument("--reason")
    actor(reset)

    ban = command("ban", "stop a member from generating until a time")
    ban.add_argument("--guild", required=True)
    ban.add_argument("--user", required=True)
    until = ban.add_mutually_exclusive_group(required=True)
    until.add_argument("--until", help="ISO date-time; without an offset it is UTC")
    until.add_argument("--hours", type=_hours, help="hours from now")
    ban.add_argument("--reason", required=True)
    actor(ban)

    unban = command("unban", "lift a member's ban")
    unban.add_argument("--guild", required=True)
    unban.add_argument("--user", required=True)
    actor(unban)

    usage = command("usage", "usage by user, channel or day")
    usage.add_argument("--guild", required=True)
    usage.add_argument("--by", choices=("user", "channel", "day"), default="user")
    usage.add_argument(
        "--since", help="first day, YYYY-MM-DD in the guild's time zone (default: period start)"
    )
    usage.add_argument("--until", help="last day included, YYYY-MM-DD (default: period end)")
    usage.add_argument("--json", action="store_true", help="print JSON")

    export = command("export", "write the ledger as CSV")
    export.add_argument("--guild", help="one guild; without it every guild")
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


def _parse_until(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _UsageError(f"--until: not an ISO date-time: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def _parse_day(option: str, text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise _UsageError(f"{option}: not a date YYYY-MM-DD: {text!r}") from None


def _describe(name: str, balance: Balance) -> str:
    resets = balance.resets_at.isoformat(timespec="seconds")
    if balance.limit is None:
        return (
            f"{name}: unlimited; {balance.used} credits used, {balance.reserved} reserved "
            f"this {balance.period} (resets {resets})"
        )
    return (
        f"{name}: {balance.remaining} of {balance.limit} credits left this {balance.period} "
        f"({balance.used} used, {balance.reserved} reserved; resets {resets})"
    )


def _limit_value(args: argparse.Namespace) -> int | None:
    return None if args.unlimited else int(args.credits)


def _print(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


async def _run(args: argparse.Namespace, ledger: QuotaService) -> int:
    name: str = args.quota_command
    if name == "show":
        balances = await ledger.balance(args.guild, args.user, tuple(args.role))
        if args.json:
            _print(json.dumps(balances.to_json(), indent=2))
        else:
            _print(_describe(f"guild {args.guild}", balances.guild))
            if balances.user is not None:
                _print(_describe(f"user {args.user}", balances.user))
        return 0
    if name == "set-pool":
        config = await ledger.set_pool(args.guild, args.credits, args.period, args.tz)
        _print(
            f"guild {config.guild_id}: {config.pool_credits} credits per {config.period}, "
            f"resetting at midnight {config.timezone}"
        )
        return 0
    if name == "user-default":
        config = await ledger.set_user_default(args.guild, _limit_value(args))
        shown = "unlimited" if config.user_default is None else f"{config.user_default} credits"
        _print(f"guild {config.guild_id}: members get {shown} per {config.period} by default")
        return 0
    if name == "role-limit":
        if args.remove:
            removed = await ledger.remove_role_limit(args.guild, args.role)
            _print(f"role {args.role}: " + ("limit removed" if removed else "had no limit"))
            return 0
        await ledger.set_role_limit(args.guild, args.role, _limit_value(args))
        _print(f"role {args.role}: " + ("unlimited" if args.unlimited else f"{args.credits}"))
        return 0
    if name == "user-limit":
        if args.remove:
            removed = await ledger.remove_user_limit(args.guild, args.user)
            _print(f"user {args.user}: " + ("limit removed" if removed else "had no limit"))
            return 0
        await ledger.set_user_limit(args.guild, args.user, _limit_value(args))
        _print(f"user {args.user}: " + ("unlimited" if args.unlimited else f"{args.credits}"))
        return 0
    if name == "grant":
        grant = await ledger.grant(
            args.guild, args.credits, user_id=args.user, by=_actor(args), reason=args.reason
        )
        target = f"user {grant.user_id}" if grant.user_id else f"guild {grant.guild_id} pool"
        _print(f"granted {grant.credits} credits to {target} for this period")
        return 0
    if name == "reset":
        await ledger.reset(args.guild, args.user, by=_actor(args), reason=args.reason)
        target = f"user {args.user}" if args.user else f"guild {args.guild}"
        _print(f"{target}: usage of this period reset")
        return 0
    if name == "ban":
        now = ledger.now()
        until = (
            now + timedelta(hours=args.hours)
            if args.hours is not None
            else _parse_until(args.until)
        )
        if until <= now:
            raise _UsageError("--until: must be in the future")
        ban = await ledger.ban(args.guild, args.user, until, args.reason, _actor(args))
        _print(f"user {ban.user_id} banned until {ban.until.isoformat(timespec='seconds')}")
        return 0
    if name == "unban":
        lifted = await ledger.unban(args.guild, args.user, _actor(args))
        _print(f"user {args.user}: " + ("ban lifted" if lifted else "was not banned"))
        return 0 if lifted else 1
    if name == "usage":
        return await _usage(args, ledger)
    if name == "export":
        data = await ledger.export_csv(args.guild)
        if args.out is None:
            sys.stdout.write(data)
        else:
            out: Path = args.out
            await asyncio.to_thread(out.write_text, data, encoding="utf-8")
        return 0
    if name == "job":
        info = await ledger.job_info(args.ref)
        if info is None:
            sys.stderr.write(f"no job, interaction or reservation {args.ref!r} in the ledger\n")
            return 1
        if args.json:
            _print(json.dumps(info.to_json(), indent=2))
        else:
            charged = info.cost_settled if info.cost_settled is not None else "-"
            _print(
                f"{info.created_at.isoformat(timespec='seconds')} guild {info.guild_id} "
                f"channel {info.channel_id or '-'} user {info.user_id}: {info.state}, "
                f"{info.cost_reserved} reserved, {charged} charged\nprompt: {info.prompt or ''}"
            )
        return 0
    raise _UsageError(f"unknown quota command {name!r}")


async def _usage(args: argparse.Namespace, ledger: QuotaService) -> int:
    since: datetime | None = None
    until: datetime | None = None
    if args.since or args.until:
        config = await ledger.guild_config(args.guild)
        tz = zone(config.timezone)
        if args.since:
            day = _parse_day("--since", args.since)
            since = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
        if args.until:
            day = _parse_day("--until", args.until) + timedelta(days=1)
            until = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
        if since is not None and until is not None and until <= since:
            raise _UsageError("--until: must not be before --since")
    by: UsageBy = args.by
    rows = await ledger.usage(args.guild, since, until, by)
    if args.json:
        _print(json.dumps([row.to_json() for row in rows], indent=2))
        return 0
    if not rows:
        _print("no usage")
        return 0
    width = max(len(by), *(len(row.key) for row in rows))
    _print(f"{by:<{width}}  {'jobs':>6}  {'credits':>8}  {'reserved':>8}  {'refunded':>8}")
    for row in rows:
        _print(
            f"{row.key:<{width}}  {row.jobs:>6}  {row.credits:>8}  {row.reserved:>8}  "
            f"{row.refunded_jobs:>8}"
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
        sys.stderr.write(f"quota {args.quota_command}: {exc.user_message}\n")
        return 2
