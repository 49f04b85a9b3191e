"""Killing the bot at each step of a job and starting it again loses nothing.

The bot runs as a real subprocess (`python -m bot run`) against the emulators,
which live in the test process and outlive it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.config import Settings
from bot.quota import open_ledger
from tests.e2e.conftest import populate, process_env
from tests.e2e.test_generation import final, opt
from tests.emulators.discord import DiscordEmulator
from tests.emulators.providers import Error, Hang, Processing, ProviderEmulator, make_png


def can_rename_host() -> bool:
    """Whether a process can come up under a host name of its own (a new UTS
    namespace, as a recreated container does) on this machine."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--uts", "sh", "-c", "hostname rename-probe"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


class BotProcess:
    def __init__(self, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.env, self.cwd, self.log = env, cwd, log
        self.process: asyncio.subprocess.Process | None = None
        # Set (where can_rename_host) to start the next process under this host name.
        self.hostname: str | None = None

    async def start(self, discord_emu: DiscordEmulator, *, all_shards: bool = True) -> None:
        identified = discord_emu.identifies
        with self.log.open("ab") as log:
            self.process = await self._spawn(log)
        await discord_emu.wait_for(
            lambda: discord_emu.identifies > identified, timeout=30, what="bot IDENTIFY"
        )
        if all_shards:  # with one process per shard, only the last start sees them all
            await discord_emu.wait_until_ready()

    async def _spawn(self, log: Any) -> asyncio.subprocess.Process:
        command = [sys.executable, "-m", "bot", "--env-file", os.devnull, "run"]
        if self.hostname is not None:
            # unshare and sh both exec: the signals go to the bot itself.
            script = f'hostname {self.hostname} && exec "$0" "$@"'
            command = ["unshare", "--uts", "sh", "-c", script, *command]
        return await asyncio.create_subprocess_exec(
            *command, env=self.env, cwd=self.cwd, stdout=log, stderr=log
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    async def wait(self, timeout: float = 30) -> int:  # noqa: ASYNC109
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await self.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@pytest.fixture
async def setup(tmp_path):
    async with (
        DiscordEmulator(heartbeat_interval=2.0) as discord_emu,
        ProviderEmulator() as providers,
    ):
        ids = populate(discord_emu)
        data = tmp_path / "data"
        env = process_env(
            discord_emu,
            providers,
            tmp_path,
            data,
            DEV_GUILD_ID=str(ids["guild_id"]),
            NANOBANANA_API_KEY="sk-test-key",
            NANOBANANA_BASE_URL=providers.nanobanana_base_url,
            POLL_INITIAL="0.05",
            POLL_MAX="0.2",
            RETRY_BACKOFF_MAX="0.05",
            DEFAULT_POOL_CREDITS="100",
            SHUTDOWN_GRACE="0.5",
            # A killed process's jobs are adopted once its lease runs out.
            LEASE_TIMEOUT="3",
            LEASE_INTERVAL="0.5",
        )
        bot = BotProcess(env, tmp_path, tmp_path / "bot.log")
        try:
            yield discord_emu, providers, ids, bot, env
        finally:
            await bot.stop()


def _settings(env: dict[str, str]) -> Settings:
    return Settings(_env_file=None, data_dir=Path(env["DATA_DIR"]))


def db_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of the bot's SQLite file as they are now (another process writes it)."""
    if not path.exists():
        return []
    conn = sqlite3.connect(path, timeout=30)
    try:
        return [tuple(row) for row in conn.execute(sql).fetchall()]
    except sqlite3.OperationalError:
        return []  # not migrated yet
    finally:
        conn.close()


def held_reservations(env: dict[str, str]) -> int:
    rows = db_rows(
        _settings(env).sqlite_path, "SELECT COUNT(*) FROM quota_entries WHERE state = 'reserved'"
    )
    return int(rows[0][0]) if rows else 0


async def guild_balance(env: dict[str, str], guild_id: int) -> Any:
    async with open_ledger(_settings(env), sweep=False) as ledger:
        return (await ledger.balance(str(guild_id))).guild


async def settled_balance(env: dict[str, str], guild_id: int) -> Any:
    """The guild's balance once nothing is held: a result is posted before its
    credits are settled, so a test that saw the post waits for the settle."""
    for _ in range(300):
        balance = await guild_balance(env, guild_id)
        if balance.reserved == 0:
            return balance
        await asyncio.sleep(0.1)
    raise AssertionError(f"credits still held: {balance}")


def results_in(discord_emu: DiscordEmulator, channel_id: int) -> list[Any]:
    """Results posted as channel messages (not as interaction responses)."""
    return [
        m
        for m in discord_emu.channel_messages(channel_id)
        if m.webhook_id is None
        and m.embeds
        and (m.embeds[0].get("footer") or {}).get("text", "").startswith("Job ")
    ]


def notices_in(discord_emu: DiscordEmulator, channel_id: int, member_id: int) -> list[Any]:
    return [
        m
        for m in discord_emu.channel_messages(channel_id)
        if m.content.startswith(f"<@{member_id}>") and not m.embeds
    ]


async def imagine(discord_emu, ids, prompt: str, provider: str = "modelslab"):
    return await discord_emu.slash(
        "imagine",
        guild_id=ids["guild_id"],
        channel_id=ids["channel_id"],
        user_id=ids["member_id"],
        options=[opt("prompt", prompt), opt("provider", provider)],
    )


async def kill_once_sent(discord_emu, bot, env, sent: Callable[[Any], bool], what: str):
    """Kill the bot once one of its requests to Discord is ``sent``; the job's
    status and recorded words as the kill left them."""
    await discord_emu.wait_for(
        lambda: any(sent(r) for r in discord_emu.requests), timeout=20, what=what
    )
    bot.kill()
    await bot.wait()
    ((status, words),) = db_rows(_settings(env).sqlite_path, "SELECT status, error FROM jobs")
    return status, words


async def job_ended(discord_emu, env) -> None:
    path = _settings(env).sqlite_path
    await discord_emu.wait_for(
        lambda: db_rows(path, "SELECT status FROM jobs") == [("failed",)],
        timeout=30,
        what="the job ended",
    )


async def test_killed_while_polling_resumes_and_delivers_once(setup):
    """The next start may come as a new container, under another host name:
    the job goes by the instance's lease, never by host or pid."""
    discord_emu, providers, ids, bot, env = setup
    await bot.start(discord_emu)
    ((killed,),) = db_rows(_settings(env).sqlite_path, "SELECT id FROM instances")
    providers.script("text2img", Processing(polls=40, eta=0.1))
    await imagine(discord_emu, ids, "survive a crash")
    await discord_emu.wait_for(lambda: len(providers.requests_to("fetch")) >= 2, timeout=20)
    bot.kill()
    await bot.wait()
    polls_before = len(providers.requests_to("fetch"))

    if can_rename_host():
        bot.hostname = "replacement"
    await bot.start(discord_emu)
    await discord_emu.wait_for(lambda: results_in(discord_emu, ids["channel_id"]), timeout=60)
    # The settle follows the post and ends the job: a second post would be in by then.
    balance = await settled_balance(env, ids["guild_id"])
    (posted,) = results_in(discord_emu, ids["channel_id"])
    assert posted.content.startswith(f"<@{ids['member_id']}>")
    assert posted.attachments
    assert len(providers.requests_to("fetch")) > polls_before  # it polled again
    assert len(providers.requests_to("text2img")) == 1  # and never submitted twice
    assert (balance.used, balance.reserved) == (1, 0)
    # The killed instance's row went with its job: only the new one is left.
    ((instance, host),) = db_rows(_settings(env).sqlite_path, "SELECT id, host FROM instances")
    assert instance != killed
    assert bot.hostname is None or host == bot.hostname


async def test_killed_while_downloading_fetches_again(setup):
    discord_emu, providers, ids, bot, env = setup
    await bot.start(discord_emu)
    providers.script("file", Hang(120))
    await imagine(discord_emu, ids, "download me")
    await discord_emu.wait_for(lambda: bool(providers.requests_to("file")), timeout=20)

    # The links are journaled beside the download, not before it, with
    # "delivering" (the hold confirmed): the kill must come once they are on
    # record for the next start to fetch them. It finds no message out
    # (bot.recovery), so it downloads again and posts.
    def links_on_record() -> bool:
        rows = db_rows(_settings(env).sqlite_path, "SELECT status, outputs_json FROM jobs")
        return [(status, bool(json.loads(urls or "[]"))) for status, urls in rows] == [
            ("delivering", True)
        ]

    await discord_emu.wait_for(links_on_record, timeout=20, what="the result links on record")
    bot.kill()
    await bot.wait()

    await bot.start(discord_emu)
    await discord_emu.wait_for(lambda: results_in(discord_emu, ids["channel_id"]), timeout=60)
    assert len(providers.requests_to("text2img")) == 1
    assert len(providers.requests_to("file")) == 2  # fetched again from the recorded link
    balance = await settled_balance(env, ids["guild_id"])
    assert (balance.used, balance.reserved) == (1, 0)


async def test_sigterm_while_downloading_hands_over_and_the_next_start_delivers(setup):
    """A deploy while the result downloads past SHUTDOWN_GRACE: its links are on
    record with "delivering", so the job is handed over, not refunded, and the
    next start finds no message out, fetches the links again and posts once."""
    discord_emu, providers, ids, bot, env = setup
    await bot.start(discord_emu)
    providers.script("file", Hang(120))
    interaction = await imagine(discord_emu, ids, "deployed mid-download")
    await discord_emu.wait_for(lambda: bool(providers.requests_to("file")), timeout=20)
    assert await bot.terminate() == 0
    # Handed over: no refund, no word to the member yet.
    assert not interaction.original.content.startswith("❌")
    assert held_reservations(env) == 1

    await bot.start(discord_emu)
    await discord_emu.wait_for(lambda: results_in(discord_emu, ids["channel_id"]), timeout=60)
    assert len(results_in(discord_emu, ids["channel_id"])) == 1
    assert len(providers.requests_to("text2img")) == 1
    assert len(providers.requests_to("file")) == 2
    balance = await settled_balance(env, ids["guild_id"])
    assert (balance.used, balance.reserved) == (1, 0)
    assert notices_in(discord_emu, ids["channel_id"], ids["member_id"]) == []


async def test_killed_during_a_synchronous_call_refunds_and_says_why(setup):
    discord_emu, providers, ids, bot, env = setup
    await bot.start(discord_emu)
    providers.script("nbpro", Hang(120))
    await imagine(discord_emu, ids, "lost in flight", provider="nanobanana")
    await discord_emu.wait_for(lambda: bool(providers.requests_to("nbpro")), timeout=20)
    # Held before the call is made: what the next start must find and refund.
    assert held_reservations(env) == 1
    bot.kill()
    await bot.wait()

    await bot.start(discord_emu)
    member = ids["member_id"]
    await discord_emu.wait_for(
        lambda: notices_in(discord_emu, ids["channel_id"], member), timeout=30
    )
    (notice,) = notices_in(discord_emu, ids["channel_id"], member)
    assert "nothing was charged" in notice.content
    balance = await settled_balance(env, ids["guild_id"])
    assert (balance.used, balance.reserved) == (0, 0)


async def test_killed_before_a_failure_notice_went_out_tells_it_on_the_next_start(setup):
    """A job that failed is refunded, and its member told why, even if the
    process dies before the notice goes out: the words are on record first."""
    discord_emu, providers, ids, bot, env = setup
    await bot.start(discord_emu)
    providers.script("text2img", Error(http_status=400, message="prompt rejected"))
    # Discord holds the notice back (a rate limit); a deploy kills the bot meanwhile.
    discord_emu.fail_next("PATCH", r"/messages/@original$", status=429, retry_after=60)
    interaction = await imagine(discord_emu, ids, "never told")
    status, words = await kill_once_sent(
        discord_emu, bot, env, lambda r: r.injected, "notice held back"
    )
    assert interaction.original is not None and interaction.original.loading  # "thinking…"
    assert status == "failing" and words

    await bot.start(discord_emu)
    member = ids["member_id"]
    await discord_emu.wait_for(
        lambda: notices_in(discord_emu, ids["channel_id"], member), timeout=30
    )
    (notice,) = notices_in(discord_emu, ids["channel_id"], member)
    assert notice.content == f"<@{member}> ❌ {words}"
    await job_ended(discord_emu, env)
    balance = await settled_balance(env, ids["guild_id"])
    assert (balance.used, balance.reserved) == (0, 0)


async def test_killed_as_a_failure_notice_went_out_does_not_tell_it_twice(setup):
    discord_emu, providers, ids, bot, env = setup
    await bot.start(discord_emu)
    providers.script("text2img", Error(http_status=400, message="prompt rejected"))
    # The notice is posted, but the bot dies before it hears back.
    discord_emu.stall_next("PATCH", r"/messages/@original$", seconds=60)
    interaction = await imagine(discord_emu, ids, "told once")
    status, words = await kill_once_sent(
        discord_emu, bot, env, lambda r: r.stalled, "notice posted"
    )
    assert status == "failing"
    assert interaction.original is not None and interaction.original.content == f"❌ {words}"

    await bot.start(discord_emu)
    await job_ended(discord_emu, env)
    assert notices_in(discord_emu, ids["channel_id"], ids["member_id"]) == []
    balance = await settled_balance(env, ids["guild_id"])
    assert (balance.used, balance.reserved) == (0, 0)


async def test_killed_before_a_refusal_went_out_sends_it_privately_on_the_next_start(setup):
    """A refusal is for the member alone, after a restart too: by DM."""
    discord_emu, _providers, ids, bot, env = setup
    env["DEFAULT_USER_ALLOWANCE"] = "0"
    await bot.start(discord_emu)
    # The private answer is held back (a rate limit); a deploy kills the bot meanwhile.
    discord_emu.fail_next("POST", r"/webhooks/\d+/[^/]+$", status=429, retry_after=60)
    await imagine(discord_emu, ids, "over my allowance")
    status, words = await kill_once_sent(
        discord_emu, bot, env, lambda r: r.injected, "refusal held back"
    )
    assert status == "refusing" and "allowance" in words

    await bot.start(discord_emu)
    member = ids["member_id"]
    await discord_emu.wait_for(
        lambda: bool(discord_emu.dm_messages(member)), timeout=30, what="the refusal by DM"
    )
    (dm,) = discord_emu.dm_messages(member)
    assert dm.content.startswith(f"❌ {words}\n")
    assert "over my allowance" in dm.content  # which request it answers
    assert all(words not in m.content for m in discord_emu.channel_messages(ids["channel_id"]))
    await job_ended(discord_emu, env)


async def test_killed_while_queued_refunds_the_waiting_job(setup):
    discord_emu, providers, ids, bot, env = setup
    bot.env["MODELSLAB_MAX_QUEUED"] = "1"
    bot.env["MAX_JOBS_IN_FLIGHT_PER_USER"] = "5"
    await bot.start(discord_emu)
    providers.script("text2img", Hang(120))
    await imagine(discord_emu, ids, "first, hanging")
    await discord_emu.wait_for(lambda: bool(providers.requests_to("text2img")), timeout=20)
    await imagine(discord_emu, ids, "second, queued")
    # The second job is on record with its credits held (it then waits for the
    # provider's only slot): the next start must refund both.
    await discord_emu.wait_for(
        lambda: held_reservations(env) == 2, timeout=20, what="both jobs holding credits"
    )
    bot.kill()
    await bot.wait()

    await bot.start(discord_emu)
    member = ids["member_id"]
    await discord_emu.wait_for(
        lambda: len(notices_in(discord_emu, ids["channel_id"], member)) >= 2, timeout=30
    )
    balance = await settled_balance(env, ids["guild_id"])
    assert (balance.used, balance.reserved) == (0, 0)


async def test_sigterm_hands_over_and_the_next_start_delivers(setup):
    discord_emu, providers, ids, bot, env = setup
    await bot.start(discord_emu)
    # Once ready, the process leaves its start-up heap out of garbage collection (bot.heap).
    await discord_emu.wait_for(
        lambda: "long-lived objects left out of garbage collection" in bot.log.read_text(),
        timeout=20,
        what="the heap frozen",
    )
    providers.script("text2img", Processing(polls=40, eta=0.1))
    await imagine(discord_emu, ids, "graceful")
    await discord_emu.wait_for(lambda: len(providers.requests_to("fetch")) >= 2, timeout=20)
    assert bot.process is not None
    bot.process.send_signal(signal.SIGTERM)
    assert await bot.wait(timeout=20) == 0

    await bot.start(discord_emu)
    await discord_emu.wait_for(lambda: results_in(discord_emu, ids["channel_id"]), timeout=60)
    balance = await settled_balance(env, ids["guild_id"])
    assert (balance.used, balance.reserved) == (1, 0)
    discord_emu.assert_no_violations()


async def test_killed_while_uploading_posts_once_on_the_next_start(setup):
    discord_emu, providers, ids, bot, env = setup
    # No progress edit before the result: the first PATCH of the reply is the upload.
    bot.env["PROGRESS_INTERVAL"] = "600"
    await bot.start(discord_emu)
    # Hold the result upload with a long 429 once it comes.
    discord_emu.fail_next(
        "PATCH", r"/webhooks/\d+/[^/]+/messages/@original", status=429, retry_after=60
    )
    providers.script("text2img", Processing(polls=3, eta=0.2))
    await imagine(discord_emu, ids, "caught mid-upload")
    await discord_emu.wait_for(
        lambda: any(r.injected for r in discord_emu.requests), timeout=30, what="held upload"
    )
    bot.kill()
    await bot.wait()

    await bot.start(discord_emu)
    await discord_emu.wait_for(lambda: results_in(discord_emu, ids["channel_id"]), timeout=60)
    # The settle follows the post and ends the job: a second post would be in by then.
    balance = await settled_balance(env, ids["guild_id"])
    assert (balance.used, balance.reserved) == (1, 0)
    assert len(results_in(discord_emu, ids["channel_id"])) == 1
    assert len(providers.requests_to("text2img")) == 1


async def test_sigterm_during_a_synchronous_call_refunds_and_says_why(setup):
    """A deploy while Nano Banana Pro works synchronously: nothing to resume, so
    the member hears it at once instead of a "thinking…" that never ends."""
    discord_emu, providers, ids, bot, env = setup
    await bot.start(discord_emu)
    providers.script("nbpro", Hang(120))
    interaction = await imagine(discord_emu, ids, "deployed mid-call", provider="nanobanana")
    await discord_emu.wait_for(lambda: bool(providers.requests_to("nbpro")), timeout=20)
    assert await bot.terminate() == 0
    assert interaction.original.content.startswith("❌ The bot is restarting")
    assert "nothing was charged" in interaction.original.content
    balance = await settled_balance(env, ids["guild_id"])
    assert (balance.used, balance.reserved) == (0, 0)

    # The next start has nothing left to tell: the member heard once.
    await bot.start(discord_emu)
    after = await imagine(discord_emu, ids, "after the deploy", provider="modelslab")
    assert (await final(after, within=30)).embeds
    assert notices_in(discord_emu, ids["channel_id"], ids["member_id"]) == []


async def test_sigterm_while_uploading_finishes_the_upload_and_charges_once(setup):
    discord_emu, providers, ids, bot, env = setup
    bot.env["PROGRESS_INTERVAL"] = "600"  # the first PATCH of the reply is the upload
    await bot.start(discord_emu)
    # The upload is held past SHUTDOWN_GRACE by a 429.
    discord_emu.fail_next(
        "PATCH", r"/webhooks/\d+/[^/]+/messages/@original", status=429, retry_after=2
    )
    providers.script("text2img", Processing(polls=2, eta=0.1))
    interaction = await imagine(discord_emu, ids, "caught mid-upload by a deploy")
    await discord_emu.wait_for(
        lambda: any(r.injected for r in discord_emu.requests), timeout=30, what="held upload"
    )
    assert await bot.terminate() == 0
    assert interaction.original.embeds  # posted before the process ended
    balance = await settled_balance(env, ids["guild_id"])
    assert (balance.used, balance.reserved) == (1, 0)

    await bot.start(discord_emu)
    # The next start adopts nothing: a second post or notice would show here.
    after = await imagine(discord_emu, ids, "next")
    assert (await final(after, within=30)).embeds
    assert results_in(discord_emu, ids["channel_id"]) == []
    assert notices_in(discord_emu, ids["channel_id"], ids["member_id"]) == []
    assert len(providers.requests_to("text2img")) == 2


async def test_a_recovery_notice_discord_refuses_does_not_stop_the_start(setup):
    discord_emu, providers, ids, bot, env = setup
    await bot.start(discord_emu)
    providers.script("nbpro", Hang(120))
    await imagine(discord_emu, ids, "its channel is gone", provider="nanobanana")
    await discord_emu.wait_for(lambda: bool(providers.requests_to("nbpro")), timeout=20)
    bot.kill()
    await bot.wait()

    # The notice after the restart is refused (the channel was deleted meanwhile).
    discord_emu.fail_next(
        "POST",
        r"/channels/\d+/messages$",
        status=404,
        body={"code": 10003, "message": "Unknown Channel"},
    )
    await bot.start(discord_emu)

    # The job is refunded before its member is told: by the refused notice, it is.
    await discord_emu.wait_for(
        lambda: any(r.injected for r in discord_emu.requests), timeout=30, what="refused notice"
    )
    balance = await settled_balance(env, ids["guild_id"])
    assert (balance.used, balance.reserved) == (0, 0)
    # Still up and serving.
    interaction = await imagine(discord_emu, ids, "still here")
    assert (await final(interaction, within=30)).embeds
    assert bot.process is not None and bot.process.returncode is None


async def test_sigterm_while_an_attachment_loads_tells_the_member(setup):
    """A deploy between the acknowledgement and the job's start (a slow
    attachment): nothing is held yet, but the member hears why, privately."""
    discord_emu, providers, ids, bot, env = setup
    png = await asyncio.to_thread(make_png, 320, 240)
    attachment = discord_emu.add_attachment(ids["channel_id"], png, "slow.png", "image/png")
    discord_emu.cdn_hold = asyncio.Event()
    await bot.start(discord_emu)
    interaction = await discord_emu.slash(
        "edit",
        guild_id=ids["guild_id"],
        channel_id=ids["channel_id"],
        user_id=ids["member_id"],
        options=[opt("image", attachment["id"], 11), opt("prompt", "never started")],
        attachments={"image": attachment},
    )
    await discord_emu.wait_for(lambda: bool(discord_emu.cdn_downloads), timeout=20, what="load")
    assert await bot.terminate() == 0
    discord_emu.cdn_hold.set()
    answer = await final(interaction, within=10)
    assert "restarting" in answer.content
    assert providers.requests == []
    balance = await settled_balance(env, ids["guild_id"])
    assert (balance.used, balance.reserved) == (0, 0)
