"""The Discord application: the bot class, its command tree, and start-up."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import pkgutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.config import Settings
from bot.errors import BotError, UserError, failure_text
from bot.heap import freeze_long_lived
from bot.jobstore import JobStore
from bot.lease import Lease
from bot.metrics import Observer, instrument, observer_for, serve_metrics
from bot.recovery import Recovery, RecoveryFront
from bot.runtime import Runtime, open_runtime
from bot.styles import StyleStore

log = logging.getLogger("bot.app")

# Prompts are echoed back; nothing the bot sends may ping anyone by accident.
NO_MENTIONS = discord.AllowedMentions.none()
T = TypeVar("T")
HEARTBEAT_INTERVAL = 30.0
IMAGE_SWEEP_INTERVAL = 3600.0


def configure_endpoints(settings: Settings) -> None:
    """Point discord.py at a REST proxy and/or gateway proxy (or the test emulator).

    ``Route.BASE`` is also what interaction callbacks and webhook edits use, and
    ``DEFAULT_GATEWAY`` is what a client with a known shard count connects to.
    """
    if settings.discord_api_base_url is not None:
        discord.http.Route.BASE = str(settings.discord_api_base_url).rstrip("/")
    if settings.discord_gateway_url is not None:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


class ImageTree(app_commands.CommandTree["ImageBot"]):
    """One place where errors become messages.

    Domain errors carry a sentence for the member and go back ephemerally; anything
    else gets a short message with an error id that is logged with its traceback.
    """

    async def on_error(
        self, interaction: discord.Interaction[ImageBot], error: app_commands.AppCommandError
    ) -> None:
        await report_error(interaction, error)


async def report_error(interaction: discord.Interaction[Any], error: Exception) -> None:
    original = getattr(error, "original", error)
    if isinstance(original, BotError):
        await refuse_privately(interaction, original.user_message)
        return
    if isinstance(error, app_commands.CheckFailure):
        await refuse_privately(interaction, str(error) or "You cannot use this command here.")
        return
    error_id = uuid.uuid4().hex[:8]
    command = interaction.command.qualified_name if interaction.command else interaction.type
    log.error("error %s in %s", error_id, command, exc_info=original)
    await refuse_privately(
        interaction, f"Something went wrong on the bot's side (error id `{error_id}`)."
    )


async def refuse_privately(interaction: discord.Interaction[Any], words: str) -> None:
    """Tell the member alone why not, marked as a job's failure is (``failure_text``):
    first response, follow-up, or nothing if the token is dead."""
    content = failure_text(words)
    try:
        if interaction.response.is_done():
            await interaction.followup.send(content, ephemeral=True, allowed_mentions=NO_MENTIONS)
        else:
            await interaction.response.send_message(
                content, ephemeral=True, allowed_mentions=NO_MENTIONS
            )
    except discord.HTTPException:
        log.warning("could not send an error message for interaction %s", interaction.id)


class ImageBot(commands.AutoShardedBot):
    def __init__(
        self,
        runtime: Runtime,
        jobs: JobStore,
        *,
        sync_only: bool = False,
        http_trace: aiohttp.TraceConfig | None = None,
        lease: Lease | None = None,
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True  # channel NSFW flags and guild names; no message content
        options = _sharding(runtime.settings)
        if http_trace is not None:
            options["http_trace"] = http_trace
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=ImageTree,
            allowed_mentions=NO_MENTIONS,
            help_command=None,
            **options,
        )
        self.runtime = runtime
        self.settings = runtime.settings
        self.jobs = jobs
        self.styles = StyleStore(jobs.database)
        runtime.pipeline.journal = jobs
        self.sync_only = sync_only
        self.accepting = True  # False while shutting down: no new jobs
        self._tasks: set[asyncio.Task[Any]] = set()
        self._job_tasks: set[asyncio.Task[Any]] = set()
        self.lease = lease
        # Set by the recovery extension (cogs/recovery.py): where adopted jobs post.
        self.recovery_front: RecoveryFront | None = None
        self.recovery: Recovery | None = None
        # Set by run_bot, the process's own bot: freezing touches the whole
        # interpreter, which a bot started inside another program does not own.
        self.freeze_heap_when_ready = False

    async def run_job(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a job as a task of its own, so shutdown can wait for it by name."""
        task = asyncio.create_task(coro, name="job")
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)
        return await asyncio.shield(task)

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop taking jobs, give those in flight ``grace`` seconds, then hand the
        rest over to the next start (their provider jobs are recorded) and close."""
        self.accepting = False
        grace = self.settings.shutdown_grace if grace is None else grace
        pending = set(self._job_tasks)
        if pending:
            log.info("shutting down: waiting up to %.0f s for %d job(s)", grace, len(pending))
            _, pending = await asyncio.wait(pending, timeout=grace)
        if pending:
            # Jobs with a recorded provider job or results are handed over (the
            # next start, or another live process, resumes them once this lease
            # is released); the others are refunded and their members told; a
            # result already uploading is finished and charged first.
            self.runtime.pipeline.hand_over()
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            log.info("stopped %d job(s): handed over or refunded", len(pending))
        await self.close()

    async def connect(self, *, reconnect: bool = True) -> None:
        # discord.py uses the URL from /gateway/bot unless the shard count is known;
        # asking for the count ourselves keeps a configured gateway proxy in use.
        known: int | None = self.shard_count
        if self.settings.discord_gateway_url is not None and known is None:
            self.shard_count, _, _ = await self.http.get_bot_gateway()
        await super().connect(reconnect=reconnect)

    async def setup_hook(self) -> None:
        for name in discover_cogs():
            await self.load_extension(name)
        if self.sync_only:
            await self.sync_commands()
            return
        if self.recovery_front is not None:
            self.recovery = Recovery(
                self.jobs,
                self.runtime.ledger,
                self.runtime.pipeline,
                self.recovery_front,
                lambda job_id, coro: self.spawn(self.run_job(coro), name=f"resume-{job_id}"),
            )
        # Jobs of processes that are gone (a crash, an old container) first.
        await self.adopt_jobs()
        try:
            await self.runtime.ledger.sweep_expired()
        except Exception:
            log.exception("start-up sweep of expired reservations failed")
        if self.settings.dev_guild_id is not None:
            await self.sync_commands(self.settings.dev_guild_id)
        self.spawn(self._heartbeat(), name="heartbeat")
        self.spawn(self._sweep_images(), name="image-retention")
        if self.lease is not None:
            self.spawn(self._keep_lease(self.lease), name="lease")
        if self.freeze_heap_when_ready:
            self.spawn(self._freeze_heap(), name="freeze-heap")

    async def _freeze_heap(self) -> None:
        await self.wait_until_ready()  # the caches are full
        # Once, at start-up: a collection holds the interpreter whichever thread runs it.
        frozen = freeze_long_lived()
        log.info("%d long-lived objects left out of garbage collection", frozen)

    async def adopt_jobs(self) -> None:
        """Take and finish the jobs of processes whose lease ran out. Never raises:
        what fails now is found again at the next renewal."""
        if self.lease is None or self.recovery is None or not self.accepting:
            return
        try:
            records = await self.lease.adopt()
            await self.recovery.finish(records)
        except Exception:
            log.exception("adopting the jobs of gone processes failed; will look again")

    async def _keep_lease(self, lease: Lease) -> None:
        interval = self.settings.lease_interval
        while True:
            await asyncio.sleep(interval)
            try:
                held = await lease.renew()
            except Exception:
                log.exception("could not renew the lease")
                held = lease.surely_held()
            if not held:
                await self._lease_lost(lease)
            await self.adopt_jobs()

    async def _lease_lost(self, lease: Lease) -> None:
        """This process stalled past its lease and its jobs were adopted (or may
        be at any moment): stop them without a word, then go on under a new lease."""
        pipeline = self.runtime.pipeline
        pipeline.abandoning = True
        try:
            running = set(self._job_tasks)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        finally:
            pipeline.abandoning = False
        while True:
            try:
                await lease.acquire()
                return
            except Exception:
                log.exception("could not register a new lease; retrying")
                await asyncio.sleep(self.settings.lease_interval)

    async def sync_commands(self, guild_id: int | None = None) -> int:
        if guild_id is not None:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
        else:
            synced = await self.tree.sync()
        log.info("synced %d commands to %s", len(synced), guild_id or "all guilds")
        return len(synced)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Start a background task whose reference is kept and whose failure is logged."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(finished: asyncio.Task[Any]) -> None:
            self._tasks.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.error("task %s failed", name, exc_info=finished.exception())

        task.add_done_callback(done)
        return task

    async def _heartbeat(self) -> None:
        heartbeat = self.settings.data_dir / "heartbeat"
        while True:
            await asyncio.to_thread(_touch, heartbeat)
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    async def _sweep_images(self) -> None:
        while True:
            removed = await self.runtime.store.sweep()
            if removed:
                log.info("removed %d result folder(s) past IMAGE_RETENTION_DAYS", removed)
            await asyncio.sleep(IMAGE_SWEEP_INTERVAL)

    async def on_ready(self) -> None:
        log.info("logged in as %s in %d guild(s)", self.user, len(self.guilds))

    async def close(self) -> None:
        # The shutdown task itself ends up here: it must not cancel itself.
        others = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await super().close()


def _sharding(settings: Settings) -> dict[str, Any]:
    """SHARD_COUNT/SHARD_IDS when set; otherwise discord.py asks Discord and runs all."""
    if settings.shard_count is None:
        return {}
    if settings.shard_ids is None:
        return {"shard_count": settings.shard_count}
    return {"shard_count": settings.shard_count, "shard_ids": settings.shard_ids}


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


# Extensions are found and loaded by name, as discord.py loads them: the
# application never imports the Discord layer, which depends on it.
EXTENSIONS_PACKAGE = "cogs"


def discover_cogs(package: str = EXTENSIONS_PACKAGE) -> Iterator[str]:
    """Every module under the package, skipping private ones (``_name``) that are helpers."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        raise RuntimeError(f"the {package!r} package of extensions is not installed")
    for module in pkgutil.iter_modules(spec.submodule_search_locations, prefix=f"{package}."):
        if module.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        imported = importlib.import_module(module.name)
        if hasattr(imported, "setup"):
            yield module.name


# How long a thread may hold the GIL while another waits for it (CPython's
# default is 5 ms). Every job hands work to threads and back (SQLite, Pillow,
# file writes); with the default, each hand-back waits up to 5 ms for the busy
# event loop to yield, which measurably added to every member's wait under load
# (bench: added latency p50 40 -> 26 ms, p99 87 -> 47 ms at 64 concurrent).
GIL_SWITCH_INTERVAL = 0.0005


@contextlib.asynccontextmanager
async def open_bot(settings: Settings, *, sync_only: bool = False) -> AsyncIterator[ImageBot]:
    """Shared resources first, then the bot; everything closed in reverse order."""
    from bot.quota import open_ledger

    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    configure_endpoints(settings)
    observer = Observer() if sync_only else observer_for(settings)
    async with (
        open_ledger(settings, sweep_at_start=sync_only) as ledger,
        open_runtime(settings, ledger) as runtime,
        JobStore.open(settings) as jobs,
        serve_metrics(settings, observer),
    ):
        instrument(observer, ledger, runtime.pipeline)
        lease: Lease | None = None
        if not sync_only:
            lease = Lease(jobs, settings, (ledger,))
            await lease.acquire()
        bot = ImageBot(
            runtime,
            jobs,
            sync_only=sync_only,
            http_trace=observer.discord_trace(),
            lease=lease,
        )
        observer.watch_bot(bot)
        try:
            yield bot
        finally:
            if not bot.is_closed():
                await bot.close()
            if lease is not None:
                # After every job stopped: what is left is adoptable at once.
                await lease.release()


async def run_bot(settings: Settings, *, sync_only: bool = False) -> int:
    token = settings.discord_token
    if token is None:
        raise UserError("DISCORD_TOKEN is not set")
    async with open_bot(settings, sync_only=sync_only) as bot:
        bot.freeze_heap_when_ready = True
        if sync_only:
            # login() runs setup_hook, which syncs and returns without connecting.
            await bot.login(token.get_secret_value())
            return 0
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: bot.spawn(bot.shutdown(), name="shutdown"))
        await bot.start(token.get_secret_value())
    return 0
