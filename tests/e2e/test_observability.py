"""Operating at scale: the Prometheus endpoint and JSON logs, with the real bot
against both emulators."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.config import Settings
from bot.errors import ConfigError
from bot.logs import setup_logging
from bot.metrics import Metrics, observer_for, serve_metrics
from tests.e2e.conftest import World, make_settings, populate, running_bot
from tests.e2e.test_generation import final, imagine, job_id_of, settled_balance
from tests.emulators.providers import Error, Processing

ORIGINAL = r"/webhooks/\d+/[^/]+/messages/@original"


@pytest.fixture
async def observed(emulators, tmp_path) -> AsyncIterator[World]:
    discord_emu, providers = emulators
    ids = populate(discord_emu)
    settings = make_settings(
        discord_emu, providers, tmp_path / "data", metrics_port=0, log_format="json"
    )
    async with running_bot(settings, discord_emu) as bot:
        await bot.sync_commands()
        yield World(discord_emu, providers, bot, settings, **ids)
    discord_emu.assert_no_violations()


async def scrape(world: World) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the endpoint, read over HTTP as Prometheus reads it."""
    metrics = world.bot.runtime.pipeline.observer
    assert isinstance(metrics, Metrics) and metrics.address is not None
    host, port = metrics.address
    assert host == "127.0.0.1"  # loopback unless METRICS_HOST says otherwise
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{host}:{port}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def ledger_rows(world: World) -> list[dict[str, Any]]:
    text = await world.bot.runtime.ledger.export_csv(str(world.guild_id))  # type: ignore[attr-defined]
    return [row for row in csv.DictReader(io.StringIO(text)) if row["kind"] == "reservation"]


async def test_metrics_match_the_ledger_after_jobs(observed: World):
    world = observed
    # A delivered job whose result upload Discord first rate-limits.
    world.discord.fail_next("PATCH", ORIGINAL, status=429, retry_after=0.1, times=1)
    assert (await final(await imagine(world, "a lighthouse", samples=2))).embeds
    # A job the provider refuses: refunded.
    world.providers.script("text2img", Error(http_status=400, message="Invalid prompt"))
    failed = await final(await imagine(world, "refused by the provider", provider="modelslab"))
    assert failed.content.startswith("❌")
    # A reservation its job never finished (a process that died): swept.
    ledger: Any = world.bot.runtime.ledger
    await ledger.reserve(str(world.guild_id), str(world.member_id), [], 3, "orphan", job_id="x")
    swept = await ledger.sweep_expired(now=ledger.now() + timedelta(hours=2))
    assert [r.cost for r in swept] == [3]
    await settled_balance(world)

    samples = await scrape(world)
    rows = await ledger_rows(world)
    charged = sum(int(r["cost_settled"]) for r in rows if r["state"] == "settled")
    refunded = sum(int(r["cost_reserved"]) for r in rows if r["state"] == "refunded")
    assert (charged, refunded) == (2, 1 + 3)
    assert value(samples, "imagebot_credits_charged_total") == charged
    assert value(samples, "imagebot_credits_refunded_total") == refunded

    jobs = {"mode": "text", "provider": "modelslab"}
    assert value(samples, "imagebot_jobs_total", **jobs, outcome="delivered") == 1
    assert value(samples, "imagebot_jobs_total", **jobs, outcome="failed") == 1
    failures = {
        (dict(labels)["kind"], count)
        for (name, labels), count in samples.items()
        if name == "imagebot_job_failures_total"
    }
    assert failures == {("ProviderBadRequest", 1)}
    assert (
        value(
            samples,
            "imagebot_provider_errors_total",
            provider="modelslab",
            kind="ProviderBadRequest",
        )
        == 1
    )
    assert (
        value(samples, "imagebot_provider_request_duration_seconds_count", provider="modelslab")
        == 2
    )
    assert (
        value(samples, "imagebot_job_duration_seconds_count", mode="text", outcome="delivered") == 1
    )
    assert value(samples, "imagebot_job_duration_seconds_count", mode="text", outcome="failed") == 1
    assert value(samples, "imagebot_discord_errors_total", kind="http_429") == 1
    # One sweep at start-up (nothing to refund) and the one above.
    assert value(samples, "imagebot_reservation_sweeps_total") == 2
    assert value(samples, "imagebot_reservations_swept_total", reason="expired") == 1
    for provider in ("modelslab", "nanobanana"):
        assert ("imagebot_provider_queue_depth", frozenset({("provider", provider)})) in samples
    assert value(samples, "process_cpu_seconds_total") > 0


async def test_queue_depth_counts_jobs_waiting_for_a_provider_slot(emulators, tmp_path):
    discord_emu, providers = emulators
    ids = populate(discord_emu)
    settings = make_settings(
        discord_emu, providers, tmp_path / "data", metrics_port=0, modelslab_max_queued=1
    )
    async with running_bot(settings, discord_emu) as bot:
        world = World(discord_emu, providers, bot, settings, **ids)
        await bot.sync_commands()
        providers.script("text2img", Processing(polls=200, eta=0.05))
        first = await imagine(world, "holds the only slot", provider="modelslab")
        slots = bot.runtime.pipeline.slots["modelslab"]
        second = await imagine(world, "waits for it", provider="modelslab")
        for _ in range(400):
            if slots.waiting == 1:
                break
            await asyncio.sleep(0.01)
        samples = await scrape(world)
        assert value(samples, "imagebot_provider_queue_depth", provider="modelslab") == 1
        assert value(samples, "imagebot_provider_queue_depth", provider="nanobanana") == 0
        for interaction in (first, second):
            await final(interaction, within=40)
    discord_emu.assert_no_violations()


async def test_json_logs_carry_the_job_id_on_every_line_about_a_job(observed: World):
    stream = io.StringIO()
    setup_logging(observed.settings.model_copy(update={"log_level": "DEBUG"}), stream=stream)
    try:
        results = await asyncio.gather(
            final(await imagine(observed, "first of two")),
            final(await imagine(observed, "second of two")),
        )
        await settled_balance(observed)  # the jobs' last lines are written by then
    finally:
        logging.getLogger().handlers.clear()
    job_ids = {job_id_of(message) for message in results}
    assert len(job_ids) == 2
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    about_jobs = [line for line in lines if "job_id" in line]
    # Both jobs, each from several parts of the bot (pipeline, providers, delivery).
    assert {line["job_id"] for line in about_jobs} == job_ids
    for job_id in job_ids:
        assert len({line["logger"] for line in about_jobs if line["job_id"] == job_id}) >= 2
    # A line that names a job is tagged with that job and no other, even with
    # two jobs interleaved on one event loop.
    for line in lines:
        named = [job_id for job_id in job_ids if job_id in line["message"]]
        if named:
            assert line.get("job_id") == named[0], line


async def test_a_metrics_port_in_use_is_a_configuration_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(_env_file=None, data_dir=tmp_path, metrics_port=port)
        with pytest.raises(ConfigError, match=f"METRICS_PORT: cannot listen on 127.0.0.1:{port}"):
            async with serve_metrics(settings, observer_for(settings)):
                pass


async def test_gateway_disconnects_are_counted(observed: World):
    await observed.discord.drop_connection(0)
    await observed.discord.wait_for(lambda: observed.discord.resumes >= 1, timeout=30)
    samples = await scrape(observed)
    assert value(samples, "imagebot_discord_errors_total", kind="gateway_disconnect") == 1
