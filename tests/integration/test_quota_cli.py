"""The operator's ``quota`` shell commands, run against a real database of each backend."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import pytest

from bot.config import Settings, load_settings
from bot.quota import QuotaPolicy, QuotaService, store_for
from bot.quota.cli import add_quota_parser, run_quota_command
from tests.conftest import LedgerDb


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
            "g", user, [], cost, key, channel_id="c1", job_id=f"job-{key}", prompt="a tree"
        )
        await service.settle(reservation, cost)
    finally:
        await service.close()


async def test_show_json_has_the_documented_keys(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    await reserve(settings, "u", 4, "k1")
    assert await run(settings, "show", "--guild", "g", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"guild"}
    keys = {"limit", "used", "reserved", "remaining", "period", "resets_at"}
    assert set(data["guild"]) == keys
    assert (data["guild"]["limit"], data["guild"]["used"], data["guild"]["remaining"]) == (
        50,
        4,
        46,
    )
    assert await run(settings, "show", "--guild", "g", "--user", "u", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"guild", "user"} and set(data["user"]) == keys
    assert (data["user"]["limit"], data["user"]["remaining"]) == (10, 6)

    assert await run(settings, "show", "--guild", "g", "--user", "u") == 0
    out = capsys.readouterr().out
    assert "guild g: 46 of 50 credits left" in out and "user u: 6 of 10" in out


async def test_moderation_commands(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(settings, "set-pool", "--guild", "g", "--credits", "20") == 0
    assert (
        await run(
            settings,
            "set-pool",
            "--guild",
            "g",
            "--credits",
            "30",
            "--period",
            "week",
            "--tz",
            "Europe/Berlin",
        )
        == 0
    )
    assert await run(settings, "grant", "--guild", "g", "--credits", "5") == 0
    assert await run(settings, "grant", "--guild", "g", "--credits", "2", "--user", "u") == 0
    assert await run(settings, "user-default", "--guild", "g", "--credits", "3") == 0
    assert await run(settings, "role-limit", "--guild", "g", "--role", "vip", "--unlimited") == 0
    assert await run(settings, "user-limit", "--guild", "g", "--user", "w", "--credits", "1") == 0
    capsys.readouterr()

    assert await run(settings, "show", "--guild", "g", "--user", "u", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["guild"]["limit"] == 35 and data["guild"]["period"] == "week"
    assert data["user"]["limit"] == 5
    assert (
        await run(settings, "show", "--guild", "g", "--user", "u", "--role", "vip", "--json") == 0
    )
    assert json.loads(capsys.readouterr().out)["user"]["limit"] is None
    assert await run(settings, "show", "--guild", "g", "--user", "w", "--json") == 0
    assert json.loads(capsys.readouterr().out)["user"]["limit"] == 1

    assert await run(settings, "user-limit", "--guild", "g", "--user", "w", "--remove") == 0
    assert await run(settings, "role-limit", "--guild", "g", "--role", "vip", "--remove") == 0
    assert await run(settings, "user-default", "--guild", "g", "--unlimited") == 0
    assert (
        await run(
            settings, "ban", "--guild", "g", "--user", "u", "--hours", "2", "--reason", "spam"
        )
        == 0
    )
    assert await run(settings, "unban", "--guild", "g", "--user", "u") == 0
    assert await run(settings, "unban", "--guild", "g", "--user", "u") == 1
    assert (
        await run(
            settings,
            "ban",
            "--guild",
            "g",
            "--user",
            "u",
            "--until",
            "2999-01-01T00:00",
            "--reason",
            "spam",
        )
        == 0
    )
    assert await run(settings, "reset", "--guild", "g", "--user", "u") == 0
    assert await run(settings, "reset", "--guild", "g") == 0
    out = capsys.readouterr().out
    assert "banned until 2999-01-01T00:00:00+00:00" in out


async def test_usage_export_and_job(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await reserve(settings, "alice", 3, "k1")
    await reserve(settings, "bob", 2, "k2")
    await reserve(settings, "alice", 1, "k3")
    assert await run(settings, "usage", "--guild", "g", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["key"], r["credits"], r["jobs"]) for r in rows] == [("alice", 4, 2), ("bob", 2, 1)]
    assert await run(settings, "usage", "--guild", "g", "--by", "channel") == 0
    assert "c1" in capsys.readouterr().out
    assert (
        await run(
            settings,
            "usage",
            "--guild",
            "g",
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
        await run(
            settings, "usage", "--guild", "g", "--since", "2000-01-01", "--until", "2000-01-02"
        )
        == 0
    )
    assert "no usage" in capsys.readouterr().out

    out = tmp_path / "ledger.csv"
    assert await run(settings, "export", "--out", str(out)) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 3 and rows[0]["prompt"] == "a tree"
    assert await run(settings, "export", "--guild", "g") == 0
    assert capsys.readouterr().out.startswith("kind,id,reservation_id")

    assert await run(settings, "job", "job-k2", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["user_id"], info["cost_settled"], info["prompt"]) == ("bob", 2, "a tree")
    assert await run(settings, "job", "job-k2") == 0
    assert "user bob" in capsys.readouterr().out
    assert await run(settings, "job", "missing") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["set-pool", "--guild", "g", "--credits", "5", "--tz", "Nowhere/Land"], "time zone"),
        (["ban", "--guild", "g", "--user", "u", "--until", "soon", "--reason", "x"], "ISO"),
        (
            ["ban", "--guild", "g", "--user", "u", "--until", "2000-01-01", "--reason", "x"],
            "future",
        ),
        (["usage", "--guild", "g", "--since", "yesterday"], "YYYY-MM-DD"),
        (["usage", "--guild", "g", "--since", "2024-02-02", "--until", "2024-02-01"], "before"),
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
        ["quota", "set-pool", "--guild", "g", "--credits", "-3"],
        ["quota", "grant", "--guild", "g", "--credits", "0"],
        ["quota", "role-limit", "--guild", "g", "--role", "r"],
        ["quota", "set-pool", "--guild", "g", "--credits", "1", "--period", "year"],
    ):
        with pytest.raises(SystemExit) as info:
            parser().parse_args(argv)
        assert info.value.code == 2
