"""The operator's ``quota`` shell commands, run against a real database of each backend."""

from __future__ import annotations

import argparse
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from discord.utils import time_snowflake

from bot.config import Settings, load_settings
from bot.quota import QuotaPolicy, QuotaService, store_for
from bot.quota.cli import add_quota_parser, run_quota_command
from tests.conftest import LedgerDb


def snowflake(year: int, month: int = 1, day: int = 1) -> str:
    return str(time_snowflake(datetime(year, month, day, tzinfo=UTC)))


# Real Discord ids, as an operator copies them from Discord.
G, U, W, ALICE, BOB = (snowflake(2019 + n, 3 + n) for n in range(5))
VIP = snowflake(2020, 6, 6)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="bot")
    commands = root.add_subparsers(dest="command", required=True)
    add_quota_parser(commands)
    return root


@pytest.fixture
def settings(tmp_path: Path, ledger_db: LedgerDb) -> Settings:
    return load_settings(
        env_file=None,
        data_dir=tmp_path,
        database_url=ledger_db.url,
        default_pool_credits=50,
        default_user_allowance=10,
    )


async def run(settings: Settings, *argv: str) -> int:
    args = parser().parse_args(["quota", *argv])
    assert args.command == "quota"
    return await run_quota_command(args, settings)


async def reserve(settings: Settings, user: str, cost: int, key: str) -> None:
    service = QuotaService(store_for(settings), QuotaPolicy.from_settings(settings))
    await service.start()
    try:
        reservation = await service.reserve(
            G, user, [], cost, key, channel_id="c1", job_id=f"job-{key}", prompt="a tree"
        )
        await service.settle(reservation, cost)
    finally:
        await service.close()


async def test_show_json_has_the_documented_keys(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    await reserve(settings, U, 4, "k1")
    assert await run(settings, "show", "--guild", G, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"guild", "timezone", "bans"} and data["bans"] == []
    keys = {"limit", "used", "reserved", "remaining", "period", "resets_at"}
    assert set(data["guild"]) == keys
    assert (data["guild"]["limit"], data["guild"]["used"], data["guild"]["remaining"]) == (
        50,
        4,
        46,
    )
    assert await run(settings, "show", "--guild", G, "--user", U, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"guild", "user", "timezone", "bans"} and set(data["user"]) == keys
    assert (data["user"]["limit"], data["user"]["remaining"]) == (10, 6)

    assert await run(settings, "show", "--guild", G, "--user", U) == 0
    out = capsys.readouterr().out
    assert f"guild {G}: 46 of 50 credits left" in out and f"user {U}: 6 of 10" in out


async def test_moderation_commands(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(settings, "set-pool", "--guild", G, "--credits", "20") == 0
    assert (
        await run(
            settings,
            "set-pool",
            "--guild",
            G,
            "--credits",
            "30",
            "--period",
            "week",
            "--tz",
            "Europe/Berlin",
        )
        == 0
    )
    assert await run(settings, "grant", "--guild", G, "--credits", "5") == 0
    assert await run(settings, "grant", "--guild", G, "--credits", "2", "--user", U) == 0
    assert await run(settings, "user-default", "--guild", G, "--credits", "3") == 0
    assert await run(settings, "role-limit", "--guild", G, "--role", VIP, "--unlimited") == 0
    assert await run(settings, "user-limit", "--guild", G, "--user", W, "--credits", "1") == 0
    # Every answer names credits and the same period words.
    assert capsys.readouterr().out.splitlines() == [
        f"guild {G}: pool of 20 credits per day, resetting at midnight UTC",
        f"guild {G}: pool of 30 credits per week, resetting at midnight Europe/Berlin",
        f"granted 5 extra credits to guild {G} pool for this week",
        f"granted 2 extra credits to user {U} for this week",
        f"guild {G}: members get 3 credits per week by default",
        f"role {VIP}: unlimited credits per week",
        f"user {W}: 1 credit per week",
    ]

    assert await run(settings, "show", "--guild", G, "--user", U, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["guild"]["limit"] == 35 and data["guild"]["period"] == "week"
    assert data["user"]["limit"] == 5
    assert await run(settings, "show", "--guild", G, "--user", U, "--role", VIP, "--json") == 0
    assert json.loads(capsys.readouterr().out)["user"]["limit"] is None
    assert await run(settings, "show", "--guild", G, "--user", W, "--json") == 0
    assert json.loads(capsys.readouterr().out)["user"]["limit"] == 1

    assert await run(settings, "user-limit", "--guild", G, "--user", W, "--remove") == 0
    assert await run(settings, "role-limit", "--guild", G, "--role", VIP, "--remove") == 0
    assert await run(settings, "user-default", "--guild", G, "--unlimited") == 0
    assert (
        await run(settings, "ban", "--guild", G, "--user", U, "--hours", "2", "--reason", "spam")
        == 0
    )
    assert await run(settings, "unban", "--guild", G, "--user", U) == 0
    assert await run(settings, "unban", "--guild", G, "--user", U) == 1
    assert (
        await run(
            settings,
            "ban",
            "--guild",
            G,
            "--user",
            U,
            "--until",
            "2999-01-01T00:00",
            "--reason",
            "spam",
        )
        == 0
    )
    assert await run(settings, "reset", "--guild", G, "--user", U) == 0
    assert await run(settings, "reset", "--guild", G) == 0
    out = capsys.readouterr().out
    assert "banned until 2999-01-01 00:00 Europe/Berlin" in out


async def test_usage_export_and_job(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await reserve(settings, ALICE, 3, "k1")
    await reserve(settings, BOB, 2, "k2")
    await reserve(settings, ALICE, 1, "k3")
    assert await run(settings, "usage", "--guild", G, "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["key"], r["credits"], r["jobs"]) for r in rows] == [(ALICE, 4, 2), (BOB, 2, 1)]
    assert await run(settings, "usage", "--guild", G, "--by", "channel") == 0
    assert "c1" in capsys.readouterr().out
    assert (
        await run(
            settings,
            "usage",
            "--guild",
            G,
            "--by",
            "day",
            "--since",
            "2000-01-01",
            "--until",
            "2999-12-31",
            "--json",
        )
        == 0
    )
    assert sum(r["credits"] for r in json.loads(capsys.readouterr().out)) == 6
    assert (
        await run(settings, "usage", "--guild", G, "--since", "2000-01-01", "--until", "2000-01-02")
        == 0
    )
    assert "no usage" in capsys.readouterr().out

    out = tmp_path / "ledger.csv"
    assert await run(settings, "export", "--out", str(out)) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 3 and rows[0]["prompt"] == "a tree"
    assert capsys.readouterr().out.startswith("wrote 3 ledger rows of every guild")
    assert await run(settings, "export", "--guild", G) == 0
    assert capsys.readouterr().out.startswith("kind,id,reservation_id")

    assert await run(settings, "job", "job-k2", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["user_id"], info["cost_settled"], info["prompt"]) == (BOB, 2, "a tree")
    assert await run(settings, "job", "job-k2") == 0
    assert f"user {BOB}" in capsys.readouterr().out
    assert await run(settings, "job", "missing") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["set-pool", "--guild", G, "--credits", "5", "--tz", "Nowhere/Land"], "time zone"),
        (["ban", "--guild", G, "--user", U, "--until", "soon", "--reason", "x"], "ISO"),
        (
            ["ban", "--guild", G, "--user", U, "--until", "2000-01-01", "--reason", "x"],
            "future",
        ),
        (["usage", "--guild", G, "--since", "yesterday"], "YYYY-MM-DD"),
        (["usage", "--guild", G, "--since", "2024-02-02", "--until", "2024-02-01"], "before"),
    ],
)
async def test_bad_values_exit_2_with_one_line(
    settings: Settings, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert await run(settings, *argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["quota", "set-pool", "--guild", G, "--credits", "-3"],
        ["quota", "grant", "--guild", G, "--credits", "0"],
        ["quota", "role-limit", "--guild", G, "--role", VIP],
        ["quota", "set-pool", "--guild", G, "--credits", "1", "--period", "year"],
    ):
        with pytest.raises(SystemExit) as info:
            parser().parse_args(argv)
        assert info.value.code == 2


async def test_show_lists_bans_in_the_pool_time_zone(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        await run(settings, "set-pool", "--guild", G, "--credits", "9", "--tz", "Asia/Tokyo") == 0
    )
    # Without an offset, --until is read in the pool's time zone, like usage's days.
    ban = ["ban", "--guild", G, "--user", U, "--until", "2999-01-01T09:00", "--reason", "spam"]
    assert await run(settings, *ban, "--actor", "ops") == 0
    assert "banned until 2999-01-01 09:00 Asia/Tokyo" in capsys.readouterr().out
    later = ["ban", "--guild", G, "--user", W, "--hours", "5", "--reason", "flood"]
    assert await run(settings, *later) == 0
    capsys.readouterr()

    assert await run(settings, "show", "--guild", G) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"guild {G}: 9 of 9 credits left today (0 used, 0 held")
    assert lines[0].endswith("Asia/Tokyo)")
    # Soonest to end first.
    assert lines[1].startswith(f"user {W}: banned until ") and "(reason: flood;" in lines[1]
    assert lines[2].startswith(f"user {U}: banned until 2999-01-01 09:00 Asia/Tokyo")
    assert "(reason: spam; by ops on " in lines[2]

    assert await run(settings, "show", "--guild", G, "--user", U, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["timezone"] == "Asia/Tokyo"
    assert data["guild"]["resets_at"].endswith("+09:00")
    assert data["bans"] == [
        {
            "user_id": U,
            "until": "2999-01-01T09:00:00+09:00",
            "reason": "spam",
            "banned_by": "ops",
            "created_at": data["bans"][0]["created_at"],
        }
    ]
    assert datetime.fromisoformat(data["bans"][0]["created_at"]).utcoffset() == timedelta(hours=9)

    assert await run(settings, "unban", "--guild", G, "--user", U) == 0
    capsys.readouterr()
    assert await run(settings, "show", "--guild", G, "--user", U) == 0
    assert f"user {U}: not banned" in capsys.readouterr().out
    assert await run(settings, "show", "--guild", G, "--json") == 0
    assert [b["user_id"] for b in json.loads(capsys.readouterr().out)["bans"]] == [W]


async def test_export_says_what_it_wrote_and_where(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    await reserve(settings, ALICE, 3, "k1")
    monkeypatch.chdir(tmp_path)
    assert await run(settings, "export", "--guild", G, "--out", "ledger.csv") == 0
    out = capsys.readouterr().out
    assert out == (
        f"wrote 1 ledger row of guild {G} (reservations, grants, resets) "
        f"to {tmp_path / 'ledger.csv'}\n"
    )
    assert await run(settings, "export", "--out", str(tmp_path / "missing" / "x.csv")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"quota export: --out: cannot write {tmp_path / 'missing' / 'x.csv'}")


@pytest.mark.parametrize(
    "argv",
    [
        ["show", "--guild", "g"],
        ["show", "--guild", "<@123456789012345678>"],
        ["show", "--guild", G, "--user", "alice"],
        ["show", "--guild", G, "--user", "12345"],
        ["grant", "--guild", G, "--credits", "2", "--user", "99999999999999999999999"],
        ["role-limit", "--guild", G, "--role", "vip", "--credits", "1"],
        ["export", "--guild", "Artists"],
    ],
)
def test_ids_that_are_not_snowflakes_are_refused(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["quota", *argv])
    assert info.value.code == 2
    assert "not a Discord id" in capsys.readouterr().err
