"""Secrets stay secret and files stay private, over a whole session."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

from tests.e2e.conftest import populate
from tests.e2e.test_generation import answer_of, is_final, opt
from tests.e2e.test_restart import BotProcess, results_in
from tests.emulators.discord import DiscordEmulator
from tests.emulators.providers import Error, NBError, ProviderEmulator, make_png

DISCORD_SECRET = "tok-SECRET-d1sc0rd-7f3a9c2e5b"
MODELSLAB_SECRET = "ml-SECRET-m0d3lslab-41b8e6d0"
NANOBANANA_SECRET = "sk-SECRET-n4n0b4n4n4-9c7d2a1f"


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def test_no_secret_in_any_log_line_or_file_written(tmp_path):
    async with (
        DiscordEmulator(token=DISCORD_SECRET, heartbeat_interval=2.0) as discord_emu,
        ProviderEmulator(modelslab_key=MODELSLAB_SECRET, nanobanana_key=NANOBANANA_SECRET) as emu,
    ):
        ids = populate(discord_emu)
        data = tmp_path / "data"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "LOG_LEVEL": "DEBUG",
            "DISCORD_TOKEN": DISCORD_SECRET,
            "DISCORD_API_BASE_URL": discord_emu.api_base,
            "DISCORD_GATEWAY_URL": discord_emu.gateway_url,
            "DEV_GUILD_ID": str(ids["guild_id"]),
            "MODELSLAB_API_KEY": MODELSLAB_SECRET,
            "MODELSLAB_BASE_URL": emu.modelslab_base_url,
            "NANOBANANA_API_KEY": NANOBANANA_SECRET,
            "NANOBANANA_BASE_URL": emu.nanobanana_base_url,
            "DATA_DIR": str(data),
            "DOWNLOAD_ALLOW_LOOPBACK": "true",
            "POLL_INITIAL": "0.05",
            "POLL_MAX": "0.1",
            "RETRY_BACKOFF_MAX": "0.05",
            "RETRY_ATTEMPTS": "1",
            # The four jobs below are one member's, sent without waiting: with the
            # default limit of two at a time the third could be refused before it
            # reached the provider whose scripted 401 it is meant to meet.
            "MAX_JOBS_IN_FLIGHT_PER_USER": "4",
        }
        log = tmp_path / "bot.log"
        bot = BotProcess(env, tmp_path, log)
        try:
            await bot.start(discord_emu)
            channel = ids["channel_id"]

            async def run(name: str, *options: dict[str, object], attachments=None):
                return await discord_emu.slash(
                    name,
                    guild_id=ids["guild_id"],
                    channel_id=channel,
                    user_id=ids["member_id"],
                    options=list(options),
                    attachments=attachments or {},
                )

            interactions = [await run("imagine", opt("prompt", "a plain success"))]
            png = await asyncio.to_thread(make_png, 600, 400)
            attachment = discord_emu.add_attachment(channel, png, "ref.png", "image/png")
            interactions.append(
                await run(
                    "edit",
                    opt("image", attachment["id"], 11),
                    opt("prompt", "upload it"),
                    opt("provider", "nanobanana"),
                    attachments={"image": attachment},
                )
            )
            emu.script("text2img", Error(http_status=401, message="Invalid API key"))
            interactions.append(await run("imagine", opt("prompt", "bad key path")))
            emu.script("nbpro", NBError(http_status=500, error="boom " + NANOBANANA_SECRET))
            interactions.append(
                await run("imagine", opt("prompt", "echoed key"), opt("provider", "nanobanana"))
            )
            for interaction in interactions:
                await interaction.wait_for(lambda r: is_final(answer_of(r)), timeout=30)
            assert len(results_in(discord_emu, channel)) == 0  # all answered in place
            # Each scripted failure met the job it was written for.
            assert not emu.pending_script("text2img") and not emu.pending_script("nbpro")
        finally:
            await bot.stop()

        # The CLI writes result.json too.
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "--env-file", os.devnull, "generate",
            "--mode", "text", "--prompt", "from the shell", "--out", str(tmp_path / "out"),
            env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()

        tokens = [record.token for record in discord_emu.interactions.values()]
        secrets = [DISCORD_SECRET, MODELSLAB_SECRET, NANOBANANA_SECRET]
        written = files_under(data) + files_under(tmp_path / "out") + [log]
        assert any(p.name == "result.json" for p in written)
        assert any(p.suffix == ".db" for p in written)
        for path in written:
            content = path.read_bytes()
            for secret in secrets + tokens:
                assert secret.encode() not in content, f"{secret[:12]}… found in {path}"
        for text in (out.decode(), err.decode()):
            for secret in secrets:
                assert secret not in text
        log_text = log.read_text()
        assert "DEBUG" in log_text  # the check ran over verbose logs, not an empty file

        # Owner-only files: the database and every kept image.
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        db = data / "bot.db"
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        images = [p for p in files_under(data / "images")]
        assert images
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in images)
