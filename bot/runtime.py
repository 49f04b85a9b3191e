"""The shared resources of one process, created before any front end and closed together."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp

from bot.config import Settings
from bot.images import ImageProcessor, ImageStore
from bot.jobs import Pipeline
from bot.netguard import public_connector
from bot.providers import build_providers
from bot.providers.base import Provider
from bot.quota.base import Ledger


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    # For links (results, Discord attachments): public addresses only. The
    # provider clients have their own session for the configured API hosts.
    session: aiohttp.ClientSession
    images: ImageProcessor
    store: ImageStore
    providers: Mapping[str, Provider]
    ledger: Ledger
    pipeline: Pipeline


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings, ledger: Ledger) -> AsyncIterator[Runtime]:
    timeout = aiohttp.ClientTimeout(sock_connect=settings.http_connect_timeout)
    # Two sessions: the provider APIs live where the operator configured them
    # (possibly a private proxy); everything else follows links a provider or a
    # member handed over, so it may only reach public addresses (bot.netguard).
    api_connector = aiohttp.TCPConnector(limit=100, ttl_dns_cache=300)
    links_connector = public_connector(
        allow_loopback=settings.download_allow_loopback, limit=100, ttl_dns_cache=300
    )
    with ImageProcessor.from_settings(settings) as images:
        async with (
            aiohttp.ClientSession(timeout=timeout, connector=api_connector) as api_session,
            aiohttp.ClientSession(timeout=timeout, connector=links_connector) as session,
        ):
            store = ImageStore(settings.images_dir, retention_days=settings.image_retention_days)
            providers = build_providers(settings, api_session, images)
            pipeline = Pipeline(
                settings=settings,
                providers=providers,
                ledger=ledger,
                images=images,
                store=store,
                session=session,
            )
            yield Runtime(settings, session, images, store, providers, ledger, pipeline)
