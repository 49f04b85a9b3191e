"""Driving interactions through the emulators and timing each one."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench._proc import Child
from bench._world import World, is_failure

Options = Callable[[int], tuple[list[dict[str, Any]], dict[str, Any]]]
JOB_TIMEOUT = 60.0


@dataclass
class Run:
    jobs: int
    concurrency: int
    wall: float = 0.0
    cpu: float = 0.0
    failures: int = 0
    waits: list[float] = field(default_factory=list)  # dispatch → final message, s
    added: list[float] = field(default_factory=list)  # waits minus provider time, s
    lag: list[float] = field(default_factory=list)  # probe overshoot, s
    rss_before_kib: int = 0
    peak_rss_kib: int = 0
    steps: dict[str, list[float]] = field(default_factory=dict)  # bench --steps, s

    @property
    def per_second(self) -> float:
        return self.jobs / self.wall if self.wall > 0 else 0.0

    @property
    def cpu_per_job(self) -> float:
        return self.cpu / self.jobs if self.jobs else 0.0


def imagine_options(tag: str) -> Options:
    def options(n: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return (
            [
                {"name": "prompt", "type": 3, "value": f"bench {tag} {n} a red fox"},
                {"name": "aspect_ratio", "type": 3, "value": "1:1"},
            ],
            {},
        )

    return options


async def drive(
    world: World,
    child: Child,
    *,
    jobs: int,
    concurrency: int,
    command: str,
    options: Options,
    stagger: float = 0.0,
    job_timeout: float = JOB_TIMEOUT,
) -> Run:
    """``jobs`` interactions, ``concurrency`` at a time (one member each); worker
    ``i`` starts ``i * stagger`` seconds late, so that arrivals spread out."""
    discord, providers = world.discord, world.providers
    loop = asyncio.get_running_loop()
    run = Run(jobs=jobs, concurrency=concurrency)
    counter = itertools.count()
    began = await child.call("begin")
    run.rss_before_kib = began["rss_kib"]["VmRSS"]
    first = loop.time()

    async def worker(index: int, member: int) -> None:
        await asyncio.sleep(index * stagger)
        while (n := next(counter)) < jobs:
            wire, attachments = options(n)
            record = await discord.slash(
                command,
                guild_id=world.guild_id,
                channel_id=world.channel_id,
                user_id=member,
                options=wire,
                attachments=attachments,
            )
            try:
                done_at = await asyncio.wait_for(discord.expect(record.id), job_timeout)
            except TimeoutError:
                run.failures += 1
                continue
            if is_failure(record):
                run.failures += 1
            prompt = str(next(o["value"] for o in wire if o["name"] == "prompt"))
            wait = done_at - record.created_at
            run.waits.append(wait)
            run.added.append(wait - providers.busy.get(prompt, 0.0))

    members = world.member_ids[:concurrency]
    await asyncio.gather(*(worker(i, m) for i, m in enumerate(members)))
    run.wall = loop.time() - first
    await asyncio.sleep(0.2)  # let the last settle and bookkeeping finish
    ended = await child.call("end")
    run.cpu = ended["cpu"]
    run.lag = ended["lag"]
    run.steps = ended.get("steps", {})
    run.peak_rss_kib = ended["rss_kib"]["VmHWM"]
    run.failures += int(ended.get("failures", 0))
    discord.forget()
    providers.forget()
    return run
