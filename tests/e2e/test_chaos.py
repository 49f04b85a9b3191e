"""Chaos: the real bot process, killed at random moments, restarted as new containers.

Six rounds of jobs of mixed kinds (instant, queued for seconds at the provider,
waiting for a provider slot, slow synchronous calls), each round ended by
SIGKILL or SIGTERM at a moment chosen by a seeded random generator among the
job's own milestones; every other start comes back with another host name (a
new UTS namespace, as a recreated container does) where this machine allows
it, and always as a new instance. After the last start has settled
everything: every job answered exactly once, no image free, none charged
twice, no credits held, no provider job submitted twice, and no row left of
the gone processes' instances.

Each job comes from its own member, so an answer in the channel (after a
restart there is no interaction token left) names the job it belongs to.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import MEMBER_PERMISSIONS, process_env
from tests.e2e.test_generation import answer_of, is_final, opt
from tests.e2e.test_restart import BotProcess, can_rename_host, db_rows
from tests.emulators.discord import DiscordEmulator
from tests.emulators.providers import Processing, ProviderEmulator, Success

SEED = 20261128
ROUNDS = 6
JOBS_PER_ROUND = 8  # 48 jobs in all


def _prompt_of(request: Any) -> str | None:
    if isinstance(request.json, dict) and isinstance(request.json.get("prompt"), str):
        return str(request.json["prompt"])
    values = request.form.get("prompt") or []
    return str(values[0]) if values else None


@pytest.mark.slow
async def test_jobs_survive_random_kills_and_new_containers(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    rename = can_rename_host()
    async with (
        DiscordEmulator(heartbeat_interval=2.0) as discord_emu,
        ProviderEmulator() as providers,
    ):
        guild = discord_emu.add_guild(name="Chaos")
        channel = discord_emu.add_channel(guild.id, name="art")
        members = [
            discord_emu.add_member(guild.id, name=f"m{i}", permissions=MEMBER_PERMISSIONS).id
            for i in range(ROUNDS * JOBS_PER_ROUND)
        ]
        data = tmp_path / "data"
        database = data / "bot.db"
        env = process_env(
            discord_emu,
            providers,
            tmp_path,
            data,
            DEV_GUILD_ID=str(guild.id),
            NANOBANANA_API_KEY="sk-test-key",
            NANOBANANA_BASE_URL=providers.nanobanana_base_url,
            POLL_INITIAL="0.05",
            POLL_MAX="0.2",
            RETRY_BACKOFF_MAX="0.05",
            DEFAULT_POOL_CREDITS="10000",
            DEFAULT_USER_ALLOWANCE="unlimited",
            MODELSLAB_MAX_QUEUED="2",  # some jobs wait for a provider slot
            SHUTDOWN_GRACE="1",
            LEASE_TIMEOUT="2",
            LEASE_INTERVAL="0.5",
        )
        bot = BotProcess(env, tmp_path, tmp_path / "bot.log")
        interactions: list[tuple[int, str, Any]] = []  # (member, prompt, record)
        stops: list[str] = []
        started: list[tuple[str, str | None]] = []  # each start's instance: (id, host)
        try:
            for round_no in range(ROUNDS + 1):
                bot.hostname = f"pod-{round_no}" if rename and round_no % 2 == 1 else None
                await bot.start(discord_emu)
                # Read now: once gone and owning nothing, an instance's row is deleted.
                (newest,) = db_rows(
                    database, "SELECT id, host FROM instances ORDER BY started_at DESC LIMIT 1"
                )
                started.append((str(newest[0]), newest[1]))
                if round_no == ROUNDS:
                    break  # the last start only finishes what is left
                # Behaviours for this round's provider calls, in a seeded mix.
                for _ in range(JOBS_PER_ROUND):
                    if rng.random() < 0.5:
                        providers.script("text2img", Success())
                    else:
                        polls = rng.randint(3, 12)
                        providers.script("text2img", Processing(polls=polls, eta=0.2))
                    providers.script("nbpro", Processing(polls=rng.randint(2, 6), eta=0.25))
                sent_before = len(providers.requests)
                start = len(interactions)
                for i in range(start, start + JOBS_PER_ROUND):
                    member = members[i]
                    prompt = f"chaos job {i}"
                    provider = "nanobanana" if rng.random() < 0.3 else "modelslab"
                    record = await discord_emu.slash(
                        "imagine",
                        guild_id=guild.id,
                        channel_id=channel.id,
                        user_id=member,
                        options=[opt("prompt", prompt), opt("provider", provider)],
                    )
                    interactions.append((member, prompt, record))
                keys = {str(record.id) for _, _, record in interactions[start:]}

                def admitted(keys: set[str] = keys) -> bool:
                    rows = db_rows(database, "SELECT idempotency_key FROM jobs")
                    return keys <= {str(row[0]) for row in rows}

                # Each job is on record before the moment of the kill is chosen: a
                # SIGKILL in the milliseconds between the acknowledgement and the
                # record leaves nothing to recover (there is no record to find).
                await discord_emu.wait_for(admitted, timeout=30, what="jobs admitted")
                # The kill comes after a random number of the round's provider
                # calls (submits, polls, downloads), or once the round is over.
                calls = rng.randint(0, 3 * JOBS_PER_ROUND)
                round_records = [record for _, _, record in interactions[start:]]

                def kill_moment(
                    sent_before: int = sent_before,
                    calls: int = calls,
                    records: list[Any] = round_records,
                ) -> bool:
                    return len(providers.requests) - sent_before >= calls or all(
                        is_final(r.original) for r in records
                    )

                await discord_emu.wait_for(kill_moment, timeout=60, what="the moment of the kill")
                if rng.random() < 0.5:
                    stops.append("SIGKILL")
                    bot.kill()
                    await bot.wait()
                else:
                    stops.append("SIGTERM")
                    assert await bot.terminate() == 0

            def answers(member: int, record: Any) -> int:
                mentions = [
                    m
                    for m in discord_emu.channel_messages(channel.id)
                    if m.content.startswith(f"<@{member}>")
                ]
                return int(is_final(answer_of(record))) + len(mentions)

            def reserved() -> int:
                rows = db_rows(
                    database, "SELECT COUNT(*) FROM quota_entries WHERE state = 'reserved'"
                )
                return int(rows[0][0]) if rows else -1

            def unfinished() -> int:
                rows = db_rows(
                    database,
                    "SELECT COUNT(*) FROM jobs WHERE status NOT IN ('delivered', 'failed')",
                )
                return int(rows[0][0]) if rows else -1

            def unanswered() -> list[str]:
                return [str(r.id) for m, _, r in interactions if answers(m, r) < 1]

            try:
                await discord_emu.wait_for(
                    lambda: not unanswered() and reserved() == 0 and unfinished() == 0,
                    timeout=90,
                    what="every job answered and settled",
                )
            except TimeoutError as exc:
                # Which part is missing, for whoever reads the failure.
                exc.add_note(
                    f"unanswered interactions: {unanswered()}; holds left: {reserved()};"
                    f" unfinished jobs: {unfinished()}; stops: {stops}"
                )
                raise
            # Every earlier instance owns nothing now: the next adopter's look
            # (each LEASE_INTERVAL) forgets them, the last one's lease stays.
            last = started[-1][0]
            await discord_emu.wait_for(
                lambda: {row[0] for row in db_rows(database, "SELECT id FROM instances")} == {last},
                timeout=30,
                what="the gone instances forgotten",
            )
            assert await bot.terminate() == 0
        finally:
            await bot.stop()

        assert "SIGKILL" in stops and "SIGTERM" in stops, stops
        assert len(interactions) >= 40
        entries = {
            str(row[0]): (row[1], row[2], row[3])
            for row in db_rows(
                database,
                "SELECT idempotency_key, state, cost_reserved, cost_settled FROM quota_entries",
            )
        }
        counts = {
            (str(row[0]), int(row[1]))
            for row in db_rows(
                database, "SELECT idempotency_key, COUNT(*) FROM quota_entries GROUP BY 1"
            )
        }
        assert all(n == 1 for _, n in counts), "a job reserved twice"
        submitted: dict[str, int] = {}
        for request in providers.requests:
            if request.endpoint in ("text2img", "nbpro"):
                asked = _prompt_of(request)
                assert asked is not None
                submitted[asked] = submitted.get(asked, 0) + 1
        delivered = refunded = 0
        for member, prompt, record in interactions:
            assert answers(member, record) == 1, (prompt, record.original)
            assert submitted.get(prompt, 0) <= 1, f"{prompt} submitted twice"
            in_channel = [
                m
                for m in discord_emu.channel_messages(channel.id)
                if m.content.startswith(f"<@{member}>")
            ]
            got_images = bool(
                (record.original is not None and record.original.embeds)
                or any(m.embeds for m in in_channel)
            )
            state, cost, settled = entries.get(str(record.id), (None, None, None))
            if got_images:
                delivered += 1
                # Charged, exactly what was held, once.
                assert (state, settled) == ("settled", cost), (prompt, state, settled)
            else:
                refunded += 1
                assert state in (None, "refunded"), (prompt, state)
        assert delivered > 0 and refunded > 0, (delivered, refunded)
        assert len({instance for instance, _ in started}) == ROUNDS + 1  # new on every start
        assert db_rows(database, "SELECT id, state FROM instances") == [(last, "stopped")]
        hosts = {host for _, host in started if host is not None}
        if rename:  # otherwise only the instance changed, which is all that counts
            assert {f"pod-{n}" for n in range(1, ROUNDS + 1, 2)} <= hosts
