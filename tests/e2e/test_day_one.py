"""The mistakes an operator makes on day one, met by the real ``python -m bot`` as a
subprocess: each ends with one line on stderr that names what to fix, no traceback,
and the documented exit status (2: a setting to fix, 3: a service unreachable)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import held_port
from tests.e2e.conftest import populate
from tests.emulators.discord import DiscordEmulator

EXIT_CONFIG, EXIT_UNAVAILABLE = 2, 3
GUILD = "418151490012345678"  # a real-looking server id (snowflake)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stderr.splitlines()


async def run_bot_cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> Result:  # noqa: ASYNC109
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "--env-file", os.devnull, *args,
        env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


def one_line(result: Result, code: int, *fragments: str) -> str:
    """The result failed with ``code`` and said so in exactly one line."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.lines[0]
    return result.lines[0]


def base_env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "MODELSLAB_API_KEY": "ml-test-key",
        "DATA_DIR": str(tmp_path / "data"),
        **values,
    }


@pytest.fixture
async def discord_emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator(heartbeat_interval=2.0) as emulator:
        yield emulator


def discord_env(tmp_path: Path, emulator: DiscordEmulator, **values: str) -> dict[str, str]:
    discord = {
        "DISCORD_TOKEN": emulator.token,
        "DISCORD_API_BASE_URL": emulator.api_base,
        "DISCORD_GATEWAY_URL": emulator.gateway_url,
    }
    return base_env(tmp_path, **{**discord, **values})


# --- Discord -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "sync"])
async def test_a_wrong_token_names_discord_token(tmp_path, discord_emu, command):
    env = discord_env(tmp_path, discord_emu, DISCORD_TOKEN="MTA.not-the-token.at-all")
    result = await run_bot_cli(command, env=env, cwd=tmp_path)
    line = one_line(result, EXIT_CONFIG, "DISCORD_TOKEN", "refused", "Reset Token")
    assert "MTA.not-the-token.at-all" not in line
    assert discord_emu.identifies == 0


async def test_a_token_pasted_with_its_bot_prefix_is_told_so(tmp_path, discord_emu):
    env = discord_env(tmp_path, discord_emu, DISCORD_TOKEN=f"Bot {discord_emu.token}")
    result = await run_bot_cli("run", env=env, cwd=tmp_path)
    one_line(result, EXIT_CONFIG, "DISCORD_TOKEN", 'without "Bot " in front')


async def test_check_online_verifies_the_token(tmp_path, discord_emu):
    env = discord_env(tmp_path, discord_emu)
    good = await run_bot_cli("check", "--online", env=env, cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert "logs in as EmuBot" in good.stdout
    assert discord_emu.requests_to("GET", r"/users/@me$")

    env["DISCORD_TOKEN"] = "MTA.revoked.token"
    bad = await run_bot_cli("check", "--online", env=env, cwd=tmp_path)
    assert bad.returncode == EXIT_CONFIG
    assert "Traceback" not in bad.stderr
    assert any(line.strip().startswith("DISCORD_TOKEN: Discord refused") for line in bad.lines)

    # Without --online, check does not touch the network.
    before = len(discord_emu.requests)
    offline = await run_bot_cli("check", env=env, cwd=tmp_path)
    assert offline.returncode == 0, offline.stderr
    assert len(discord_emu.requests) == before


async def test_dev_guild_the_bot_is_not_in_names_dev_guild_id(tmp_path, discord_emu):
    ids = populate(discord_emu)
    # A real-looking server id the bot was never invited to (or lacks the scope in).
    foreign = (ids["guild_id"] + (1 << 22) * 7919) | 1
    env = discord_env(tmp_path, discord_emu, DEV_GUILD_ID=str(foreign))
    result = await run_bot_cli("run", env=env, cwd=tmp_path)
    line = one_line(result, EXIT_CONFIG, "DEV_GUILD_ID", str(foreign), "applications.commands")
    assert f"client_id={discord_emu.application_id}" in line
    assert discord_emu.identifies == 0  # stopped before connecting to the gateway

    online = await run_bot_cli("check", "--online", env=env, cwd=tmp_path)
    assert online.returncode == EXIT_CONFIG
    assert any("DEV_GUILD_ID" in line for line in online.lines)


async def test_dev_guild_joined_without_the_commands_scope_names_dev_guild_id(
    tmp_path, discord_emu
):
    ids = populate(discord_emu)
    # Invited with `bot` alone: a member of the server, but no commands there.
    discord_emu.guilds_without_commands_scope.add(ids["guild_id"])
    env = discord_env(tmp_path, discord_emu, DEV_GUILD_ID=str(ids["guild_id"]))
    result = await run_bot_cli("run", env=env, cwd=tmp_path)
    line = one_line(result, EXIT_CONFIG, "DEV_GUILD_ID", str(ids["guild_id"]))
    assert "scope=bot+applications.commands" in line
    assert f"guild_id={ids['guild_id']}" in line
    assert discord_emu.identifies == 0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def tcp_relay(sock: socket.socket, target: int) -> AsyncIterator[None]:
    """Discord's address coming back: a TCP relay from the bound ``sock`` (which
    starts listening) to the port ``target``."""
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        for task in (
            asyncio.create_task(_pipe(reader, up_writer)),
            asyncio.create_task(_pipe(up_reader, writer)),
        ):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, sock=sock)
    try:
        yield
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_unreachable_discord_is_retried_with_back_off_until_it_answers(tmp_path, discord_emu):
    populate(discord_emu)
    with held_port() as sock:  # nothing listens there yet: connections are refused
        port = sock.getsockname()[1]
        env = discord_env(
            tmp_path, discord_emu, DISCORD_API_BASE_URL=f"http://127.0.0.1:{port}/api/v10"
        )
        log_path = tmp_path / "bot.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "--env-file", os.devnull, "run",
                env=env, cwd=tmp_path, stdout=log, stderr=log,
            )  # fmt: skip
        try:

            def retries() -> list[str]:
                return [
                    line
                    for line in log_path.read_text().splitlines()
                    if "cannot reach Discord" in line
                ]

            await discord_emu.wait_for(lambda: len(retries()) >= 2, timeout=30, what="two retries")
            first, second = retries()[:2]
            assert f"127.0.0.1:{port}" in first and "connection refused" in first
            assert "trying again in 1 s" in first and "trying again in 2 s" in second
            assert process.returncode is None  # still waiting, not crashed

            async with tcp_relay(sock, discord_emu.port):
                await discord_emu.wait_for(
                    lambda: discord_emu.identifies > 0, timeout=30, what="IDENTIFY"
                )
                await discord_emu.wait_until_ready()
                process.terminate()
                assert await asyncio.wait_for(process.wait(), 30) == 0
            assert "Traceback" not in log_path.read_text()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_check_online_says_discord_is_unreachable(tmp_path):
    env = base_env(
        tmp_path,
        DISCORD_TOKEN="MTA.some.token",
        DISCORD_API_BASE_URL="http://discord-proxy.invalid/api/v10",
    )
    result = await run_bot_cli("check", "--online", env=env, cwd=tmp_path)
    assert result.returncode == EXIT_UNAVAILABLE
    assert "Traceback" not in result.stderr
    assert "Discord: cannot reach http://discord-proxy.invalid/api/v10" in result.stderr


# --- Files ---------------------------------------------------------------------


def unusable_dirs(tmp_path: Path) -> list[Path]:
    """Places no user can make a directory: under a file, and in /proc."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    return [blocker / "data", Path("/proc/imagebot-data")]


@pytest.mark.parametrize("command", ["run", "check", "quota", "generate"])
async def test_data_dir_that_cannot_be_created_names_data_dir(tmp_path, command):
    args = {
        "run": ["run"],
        "check": ["check"],
        "quota": ["quota", "show", "--guild", GUILD],
        "generate": ["generate", "--mode", "text", "--prompt", "x", "--out", str(tmp_path / "o")],
    }[command]
    for data_dir in unusable_dirs(tmp_path):
        env = base_env(tmp_path, DISCORD_TOKEN="MTA.x.y", DATA_DIR=str(data_dir))
        result = await run_bot_cli(*args, env=env, cwd=tmp_path)
        assert result.returncode == EXIT_CONFIG, result.stderr
        assert "Traceback" not in result.stderr
        problem = [line for line in result.lines if "DATA_DIR" in line]
        assert len(problem) == 1, result.stderr
        assert str(data_dir) in problem[0]
        if command != "check":
            assert len(result.lines) == 1, result.stderr


async def test_check_prints_absolute_paths_and_leaves_nothing_behind(tmp_path):
    env = base_env(tmp_path, DISCORD_TOKEN="MTA.x.y", DATA_DIR="state/bot")
    result = await run_bot_cli("check", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"Data directory: {tmp_path / 'state' / 'bot'}" in result.stdout
    assert f"Database: SQLite file {tmp_path / 'state' / 'bot' / 'bot.db'}" in result.stdout
    assert not (tmp_path / "state").exists()  # checked by trying, then tidied up


# --- Settings ------------------------------------------------------------------


async def test_check_reports_unknown_settings_and_a_provider_without_a_key(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "DISCORD_TOKEN=MTA.x.y\nMODELSLAB_MODLE_ID=flux-pro\nPROVIDER_EDIT=nanobanana\n"
    )
    env = base_env(tmp_path, NANOBANANA_CONCURENCY="10", HTTP_PROXY="", XDG_DATA_DIRS="/usr")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "check",
        env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    text = stderr.decode()
    assert process.returncode == EXIT_CONFIG, text
    assert f"Settings file: {env_file}" in stdout.decode()
    assert f"MODELSLAB_MODLE_ID (in {env_file}): not a setting" in text
    assert "did you mean MODELSLAB_MODEL_ID?" in text
    assert "NANOBANANA_CONCURENCY (in the environment)" in text
    assert "did you mean NANOBANANA_CONCURRENCY?" in text
    assert "PROVIDER_EDIT: names nanobanana, but NANOBANANA_API_KEY is not set" in text
    assert "PROVIDER_EDIT=modelslab" in text
    # Other programs' variables are none of the bot's business.
    assert "HTTP_PROXY" not in text and "XDG_DATA_DIRS" not in text
    assert "Traceback" not in text


async def test_run_refuses_a_provider_route_without_its_key(tmp_path):
    env = base_env(tmp_path, DISCORD_TOKEN="MTA.x.y", PROVIDER_TEXT="nanobanana")
    result = await run_bot_cli("run", env=env, cwd=tmp_path)
    one_line(result, EXIT_CONFIG, "PROVIDER_TEXT", "NANOBANANA_API_KEY")


# --- PostgreSQL ----------------------------------------------------------------


async def test_unreachable_postgres_reads_the_same_from_run_migrate_and_quota(
    tmp_path, refused_port
):
    url = f"postgresql://bot:pg-secret-pw@127.0.0.1:{refused_port}/imagebot"
    env = base_env(tmp_path, DISCORD_TOKEN="MTA.x.y", DATABASE_URL=url)
    lines = set()
    for args in (["run"], ["sync"], ["migrate"], ["quota", "show", "--guild", GUILD]):
        result = await run_bot_cli(*args, env=env, cwd=tmp_path)
        lines.add(one_line(result, EXIT_UNAVAILABLE, "DATABASE_URL", "connection refused"))
        assert "pg-secret-pw" not in result.stderr + result.stdout
    assert len(lines) == 1, lines
    assert "PostgreSQL database imagebot on 127.0.0.1" in lines.pop()


async def test_a_database_that_does_not_exist_is_a_setting_to_fix(tmp_path):
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        pytest.skip("TEST_DATABASE_URL is not set")
    url = base.rsplit("/", 1)[0] + "/imagebot_no_such_database"
    env = base_env(tmp_path, DATABASE_URL=url)
    for args in (["migrate"], ["quota", "show", "--guild", GUILD]):
        result = await run_bot_cli(*args, env=env, cwd=tmp_path)
        one_line(result, EXIT_CONFIG, "DATABASE_URL", "does not exist")


# --- Commands showing twice ----------------------------------------------------


async def test_sync_clear_guild_removes_a_dev_guild_copy_and_keeps_the_global_one(
    tmp_path, discord_emu
):
    import aiohttp

    ids = populate(discord_emu)
    env = discord_env(tmp_path, discord_emu)
    synced = await run_bot_cli("sync", env=env, cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr
    global_names = {c["name"] for c in discord_emu.registered_commands()}
    # What a start with DEV_GUILD_ID left behind: the same commands in the server.
    async with aiohttp.ClientSession() as session:
        url = (
            f"{discord_emu.api_base}/applications/{discord_emu.application_id}"
            f"/guilds/{ids['guild_id']}/commands"
        )
        body = [{"name": c["name"], "type": c["type"], "description": c.get("description", "")}
                for c in discord_emu.registered_commands()]  # fmt: skip
        headers = {"Authorization": f"Bot {discord_emu.token}"}
        async with session.put(url, json=body, headers=headers) as response:
            assert response.status == 200
    assert discord_emu.registered_commands(ids["guild_id"])

    cleared = await run_bot_cli(
        "sync", "--clear-guild", str(ids["guild_id"]), env=env, cwd=tmp_path
    )
    assert cleared.returncode == 0, cleared.stderr
    assert f"removed {len(body)} command(s) registered to server {ids['guild_id']}" in (
        cleared.stdout
    )
    assert discord_emu.registered_commands(ids["guild_id"]) == []
    assert {c["name"] for c in discord_emu.registered_commands()} == global_names

    elsewhere = await run_bot_cli(
        "sync", "--clear-guild", "418151490099999999", env=env, cwd=tmp_path
    )
    one_line(elsewhere, EXIT_CONFIG, "--clear-guild", "418151490099999999")


async def test_a_named_env_file_that_is_missing_is_refused(tmp_path):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "--env-file", "prod.env", "check",
        env=base_env(tmp_path), cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    result = Result(process.returncode or 0, "", stderr.decode())
    one_line(result, EXIT_CONFIG, f"--env-file {tmp_path / 'prod.env'}: no such file")


async def test_run_warns_about_an_unknown_setting_and_goes_on(tmp_path, discord_emu):
    env = discord_env(
        tmp_path, discord_emu, MODELSLAB_MODLE_ID="flux-pro", DISCORD_TOKEN="MTA.wrong.token"
    )
    result = await run_bot_cli("run", env=env, cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG
    warning, error = result.lines
    assert "WARNING" in warning and "did you mean MODELSLAB_MODEL_ID?" in warning
    assert error.startswith("DISCORD_TOKEN: Discord refused")


async def test_migrate_data_to_an_unreachable_server_names_the_to_argument(tmp_path, refused_port):
    env = base_env(tmp_path)
    migrated = await run_bot_cli("migrate", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    url = f"postgresql://bot:pg-secret-pw@127.0.0.1:{refused_port}/imagebot"
    result = await run_bot_cli("migrate-data", "--to", url, env=env, cwd=tmp_path)
    line = one_line(result, EXIT_UNAVAILABLE, "--to: cannot connect", "connection refused")
    assert "pg-secret-pw" not in line


async def test_health_without_a_running_bot_says_why_in_one_line(tmp_path):
    env = base_env(tmp_path)
    result = await run_bot_cli("health", env=env, cwd=tmp_path)
    one_line(result, 1, f"{tmp_path / 'data' / 'heartbeat'} is missing", "is the bot running?")
