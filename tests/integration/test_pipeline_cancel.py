"""Cancelling a job in the pipeline: queued or polling stops and refunds; delivering finishes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from bot.errors import BotError, JobCancelled
from bot.jobs import Job, JobResult
from bot.models import Progress, Stage
from bot.quota import open_ledger
from bot.runtime import Runtime, open_runtime
from tests.emulators.providers import Processing, ProviderEmulator
from tests.integration.test_pipeline import guild_used, settings_for, text_request


@pytest.fixture
async def emu() -> AsyncIterator[ProviderEmulator]:
    async with ProviderEmulator() as emulator:
        yield emulator


@pytest.fixture
async def make_runtime(emu, tmp_path):
    async with contextlib.AsyncExitStack() as stack:

        async def make(**overrides: Any) -> Runtime:
            settings = settings_for(emu, tmp_path, **overrides)
            ledger = await stack.enter_async_context(open_ledger(settings))
            return await stack.enter_async_context(open_runtime(settings, ledger))

        yield make


@dataclass
class GatedDelivery:
    """Records everything; holds ``deliver`` until ``release`` is set."""

    stages: list[Stage] = field(default_factory=list)
    results: list[JobResult] = field(default_factory=list)
    failures: list[BotError] = field(default_factory=list)
    delivering: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def progress(self, job: Job, progress: Progress) -> None:
        self.stages.append(progress.stage)
        self.changed.set()

    async def deliver(self, job: Job, result: JobResult) -> None:
        self.delivering.set()
        await self.release.wait()
        self.results.append(result)

    async def fail(self, job: Job | None, error: BotError) -> None:
        self.failures.append(error)

    async def reached(self, stage: Stage, times: int = 1) -> None:
        while self.stages.count(stage) < times:
            self.changed.clear()
            await self.changed.wait()


async def test_cancel_while_polling_refunds_and_stops_polling(make_runtime, emu):
    runtime = await make_runtime()
    emu.script("text2img", Processing(polls=1000, eta=0.01))
    delivery = GatedDelivery()
    task = asyncio.create_task(runtime.pipeline.run(text_request("k1"), delivery))
    await delivery.reached(Stage.PROCESSING, times=2)  # reported after the first poll
    cancelled_path = emu.requests_to("fetch")[0].path
    job_id = next(iter(runtime.pipeline._cancellable))
    assert runtime.pipeline.cancel(job_id, by="ada")
    assert not runtime.pipeline.cancel(job_id, by="ada")  # once is enough
    outcome = await task
    assert isinstance(outcome.error, JobCancelled)
    assert delivery.failures[0].user_message == "Cancelled by ada; nothing was charged."
    assert await guild_used(runtime) == (0, 0)
    polls = len(emu.requests_to("fetch"))
    # Another job polls several times; the cancelled one polls no more meanwhile.
    emu.script("text2img", Processing(polls=4, eta=0.01))
    again = GatedDelivery()
    again.release.set()
    assert (await runtime.pipeline.run(text_request("k2"), again)).ok
    later = emu.requests_to("fetch")[polls:]
    assert len(later) == 4
    assert cancelled_path not in {r.path for r in later}
    assert runtime.pipeline._cancellable == {}


async def test_cancel_while_queued_frees_nothing_it_did_not_hold(make_runtime, emu):
    runtime = await make_runtime(modelslab_max_queued=1)
    emu.script("text2img", Processing(polls=1000, eta=0.01))
    first, second = GatedDelivery(), GatedDelivery()
    running = asyncio.create_task(runtime.pipeline.run(text_request("k1"), first))
    await first.reached(Stage.PROCESSING)
    queued = asyncio.create_task(runtime.pipeline.run(text_request("k2"), second))
    await second.reached(Stage.QUEUED)
    ids = list(runtime.pipeline._cancellable)  # in the order the jobs started
    assert len(ids) == 2
    running_id, queued_id = ids
    assert runtime.pipeline.cancel(queued_id, by="mod")
    assert isinstance((await queued).error, JobCancelled)
    assert runtime.pipeline.slots["modelslab"].waiting == 0
    assert runtime.pipeline.cancel(running_id, by="mod")
    assert isinstance((await running).error, JobCancelled)
    assert await guild_used(runtime) == (0, 0)


async def test_a_job_already_delivering_finishes(make_runtime, emu):
    runtime = await make_runtime()
    delivery = GatedDelivery()
    task = asyncio.create_task(runtime.pipeline.run(text_request("k1", samples=2), delivery))
    await delivery.delivering.wait()
    assert runtime.pipeline._cancellable == {}
    assert not runtime.pipeline.cancel("any", by="ada")
    delivery.release.set()
    outcome = await task
    assert outcome.ok and outcome.result is not None
    assert outcome.result.credits_charged == 2
    assert await guild_used(runtime) == (2, 0)
