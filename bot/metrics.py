"""What the bot reports as it works, and the optional Prometheus endpoint.

The pipeline, the ledger and discord.py's HTTP client call an ``Observer``. The
base class ignores every call, so code that reports needs no "are metrics on?"
test; ``Metrics`` counts into a registry of its own (never prometheus_client's
global one), so two bots in one process, or two tests, never share figures.

The endpoint is served by aiohttp on the event loop: a scrape reads the queues
where they live, without locks, and stops with the bot.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from bot.config import Settings
from bot.errors import ConfigError

if TYPE_CHECKING:
    from discord.ext import commands

    from bot.jobs import Job, Pipeline, ProviderSlots
    from bot.models import GenerationRequest
    from bot.quota.service import QuotaService

log = logging.getLogger("bot.metrics")

# Seconds. Jobs take from a few seconds (a cached text image) to many minutes
# (a queued 4k edit, up to JOB_DEADLINE).
JOB_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800)
PREFIX = "imagebot"


class Observer:
    """Hooks called as the bot works. This one ignores them all: metrics off."""

    def job_ended(
        self,
        job: Job,
        outcome: str,
        *,
        provider: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        """``outcome``: delivered, failed, refused (quota, ban, cooldown),
        cancelled, handed_over (to the next start) or error (a bug)."""

    def request_refused(self, request: GenerationRequest, error: BaseException) -> None:
        """A request that never became a job (invalid options, no provider)."""

    @contextlib.contextmanager
    def provider_call(self, provider: str) -> Iterator[None]:
        """Around one provider call, from submission to the result's links."""
        yield

    def credits_charged(self, credits: int) -> None: ...

    def credits_refunded(self, credits: int) -> None: ...

    def reservations_swept(self, reasons: Sequence[str]) -> None:
        """One sweep ran; ``reasons`` says why each reservation it refunded was
        (``expired`` or ``crashed``)."""

    def watch_queues(self, slots: Mapping[str, ProviderSlots]) -> None:
        """Where to read each provider's queue when asked."""

    def discord_trace(self) -> aiohttp.TraceConfig | None:
        """An aiohttp trace for discord.py's HTTP session, to count its errors."""
        return None

    def watch_bot(self, bot: commands.Bot | commands.AutoShardedBot) -> None:
        """Listen to the bot's gateway events (disconnects)."""


class Metrics(Observer):
    """Counts into Prometheus metrics; see the README's Metrics section."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.jobs = Counter(
            f"{PREFIX}_jobs",
            "Jobs ended, by mode, provider and outcome",
            ["mode", "provider", "outcome"],
            registry=reg,
        )
        self.job_failures = Counter(
            f"{PREFIX}_job_failures",
            "Jobs that did not deliver, by the kind of error that ended them",
            ["mode", "provider", "kind"],
            registry=reg,
        )
        self.job_seconds = Histogram(
            f"{PREFIX}_job_duration_seconds",
            "From acceptance to the end of a job (delivered or not)",
            ["mode", "outcome"],
            buckets=JOB_BUCKETS,
            registry=reg,
        )
        self.provider_seconds = Histogram(
            f"{PREFIX}_provider_request_duration_seconds",
            "From submitting a job to a provider to its result links, polling included",
            ["provider"],
            buckets=JOB_BUCKETS,
            registry=reg,
        )
        self.provider_errors = Counter(
            f"{PREFIX}_provider_errors",
            "Provider calls that failed, by provider and kind of error",
            ["provider", "kind"],
            registry=reg,
        )
        self.charged = Counter(
            f"{PREFIX}_credits_charged", "Credits settled for delivered images", registry=reg
        )
        self.refunded = Counter(
            f"{PREFIX}_credits_refunded",
            "Credits given back: failed or cancelled jobs and sweeps",
            registry=reg,
        )
        self.sweeps = Counter(
            f"{PREFIX}_reservation_sweeps", "Sweeps of expired reservations run", registry=reg
        )
        self.swept = Counter(
            f"{PREFIX}_reservations_swept",
            "Reservations a sweep refunded, by reason (expired, crashed)",
            ["reason"],
            registry=reg,
        )
        self.discord_errors = Counter(
            f"{PREFIX}_discord_errors",
            "Failed Discord API requests, by kind (http_STATUS or the exception)",
            ["kind"],
            registry=reg,
        )
        self._queues = _QueueCollector()
        reg.register(self._queues)
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        self.address: tuple[str, int] | None = None  # where the endpoint listens

    def job_ended(
        self,
        job: Job,
        outcome: str,
        *,
        provider: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        mode = job.request.mode.value
        name = provider or job.provider
        self.jobs.labels(mode, name, outcome).inc()
        if error is not None:
            self.job_failures.labels(mode, name, type(error).__name__).inc()
        self.job_seconds.labels(mode, outcome).observe(time.monotonic() - job.started_at)

    def request_refused(self, request: GenerationRequest, error: BaseException) -> None:
        provider = request.provider or "none"
        self.jobs.labels(request.mode.value, provider, "invalid").inc()
        self.job_failures.labels(request.mode.value, provider, type(error).__name__).inc()

    @contextlib.contextmanager
    def provider_call(self, provider: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except Exception as error:
            self.provider_errors.labels(provider, type(error).__name__).inc()
            raise
        finally:
            self.provider_seconds.labels(provider).observe(time.monotonic() - started)

    def credits_charged(self, credits: int) -> None:
        self.charged.inc(credits)

    def credits_refunded(self, credits: int) -> None:
        self.refunded.inc(credits)

    def reservations_swept(self, reasons: Sequence[str]) -> None:
        self.sweeps.inc()
        for reason in reasons:
            self.swept.labels(reason).inc()

    def watch_queues(self, slots: Mapping[str, ProviderSlots]) -> None:
        self._queues.slots = slots

    def discord_trace(self) -> aiohttp.TraceConfig:
        trace = aiohttp.TraceConfig()

        async def on_end(
            _session: aiohttp.ClientSession,
            _context: SimpleNamespace,
            params: aiohttp.TraceRequestEndParams,
        ) -> None:
            if params.response.status >= 400:
                self.discord_errors.labels(f"http_{params.response.status}").inc()

        async def on_exception(
            _session: aiohttp.ClientSession,
            _context: SimpleNamespace,
            params: aiohttp.TraceRequestExceptionParams,
        ) -> None:
            self.discord_errors.labels(type(params.exception).__name__).inc()

        trace.on_request_end.append(on_end)
        trace.on_request_exception.append(on_exception)
        return trace

    def watch_bot(self, bot: commands.Bot | commands.AutoShardedBot) -> None:
        async def on_shard_disconnect(_shard_id: int) -> None:
            # discord.py resumes on its own; many of these mean a bad network.
            self.discord_errors.labels("gateway_disconnect").inc()

        bot.add_listener(on_shard_disconnect, "on_shard_disconnect")


class _QueueCollector(Collector):
    """Reads queue depths at scrape time: a gauge kept in step would need a
    hook in every path that enters or leaves a queue."""

    def __init__(self) -> None:
        self.slots: Mapping[str, ProviderSlots] = {}

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            f"{PREFIX}_provider_queue_depth",
            "Jobs waiting for a free slot of a provider (MODELSLAB_MAX_QUEUED, "
            "NANOBANANA_CONCURRENCY)",
            labels=["provider"],
        )
        for name, slots in sorted(self.slots.items()):
            depth.add_metric([name], slots.waiting)
        yield depth


def instrument(observer: Observer, ledger: QuotaService, pipeline: Pipeline) -> None:
    """Connect the observer to what it watches."""
    ledger.observer = observer
    pipeline.observer = observer
    observer.watch_queues(pipeline.slots)


def observer_for(settings: Settings) -> Observer:
    return Metrics() if settings.metrics_port is not None else Observer()


@contextlib.asynccontextmanager
async def serve_metrics(settings: Settings, observer: Observer) -> AsyncIterator[None]:
    """Serve ``/metrics`` on METRICS_HOST:METRICS_PORT while the block runs."""
    if not isinstance(observer, Metrics) or settings.metrics_port is None:
        yield
        return

    async def metrics(request: web.Request) -> web.Response:
        # Prometheus's text format, or OpenMetrics when the scraper asks for it.
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(observer.registry), headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.metrics_host, settings.metrics_port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"METRICS_PORT: cannot listen on {settings.metrics_host}:{settings.metrics_port}"
                f" ({exc.strerror or exc}); choose a free port or unset METRICS_PORT"
            ) from None
        host, port = _first_address(runner.addresses)
        observer.address = (host, port)
        log.info("metrics at http://%s:%d/metrics", host, port)
        yield
    finally:
        await runner.cleanup()


def _first_address(addresses: list[Any]) -> tuple[str, int]:
    address = addresses[0]
    return str(address[0]), int(address[1])
