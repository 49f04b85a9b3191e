"""Shared fixtures: the ledger's database on either backend.

PostgreSQL tests need ``TEST_DATABASE_URL`` (CI sets it) and are skipped
without it. Each test gets a schema of its own on that database, dropped
afterwards, so tests run in any order and a re-run starts clean. Under
pytest-xdist each worker works in a database of its own beside it (``test_gw0``
for ``test`` ...), created on first use: the migrations' advisory lock and the
server's per-database state are then never shared between workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import aiosqlite
import asyncpg  # type: ignore[import-untyped]
import pytest

from bot.quota import LedgerStore, store_for_url
from bot.quota.sqlite_store import to_db
from bot.sql import numbered

T = TypeVar("T")

PG_SKIP = "TEST_DATABASE_URL is not set: the PostgreSQL half needs a server (CI sets it)"
BACKENDS = ("sqlite", "postgresql")


def pg_base_url() -> str | None:
    """The database this process's tests make their schemas in: the one of
    ``TEST_DATABASE_URL``, or under pytest-xdist the worker's own beside it."""
    base = os.environ.get("TEST_DATABASE_URL") or None
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if base is None or not worker:
        return base
    if base not in _worker_urls:
        _worker_urls[base] = run_sync(worker_database(base, worker))
    return _worker_urls[base]


_worker_urls: dict[str, str] = {}


async def worker_database(base_url: str, worker: str) -> str:
    """The URL of the database ``<name>_<worker>`` on ``base_url``'s server,
    created there unless it exists."""
    parts = urlsplit(base_url)
    name = f"{parts.path.lstrip('/') or 'test'}_{worker}"
    if not re.fullmatch(r"\w+", name):
        raise ValueError(f"cannot derive a worker database name from {base_url!r}")
    conn = await asyncpg.connect(base_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                # template0 takes no connections: never "in use by other users".
                await conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    finally:
        await conn.close()
    return urlunsplit(parts._replace(path=f"/{name}"))


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from synchronous code, even inside a test
    whose event loop is running: on a loop of its own, in another thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def with_search_path(url: str, schema: str) -> str:
    """``url`` with the server option that makes ``schema`` the default one
    (libpq's syntax, which asyncpg and psql both accept)."""
    option = quote(f"-csearch_path={schema}", safe="")
    return f"{url}{'&' if '?' in url else '?'}options={option}"


async def create_schema(base_url: str) -> tuple[str, str]:
    """A new empty schema: (its URL, its name)."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(base_url)
    try:
        await conn.execute(f"CREATE SCHEMA {name}")
    finally:
        await conn.close()
    return with_search_path(base_url, name), name


async def drop_schema(base_url: str, name: str) -> None:
    conn = await asyncpg.connect(base_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    finally:
        await conn.close()


@contextlib.contextmanager
def held_port() -> Iterator[socket.socket]:
    """A loopback socket that is bound but never listens, for the block: its port
    refuses connections, and nothing else on the machine (another test worker's
    server, an outgoing connection's source port) can take the port meanwhile,
    as it could once a probe socket is closed and only its number kept."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port where connections are refused for the whole test."""
    with held_port() as sock:
        yield int(sock.getsockname()[1])


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh PostgreSQL schema, dropped after the test."""
    base = pg_base_url()
    if base is None:
        pytest.skip(PG_SKIP)
    url, name = run_sync(create_schema(base))
    yield url
    run_sync(drop_schema(base, name))


@dataclass(frozen=True)
class LedgerDb:
    """One test's ledger database, whichever backend."""

    backend: str
    url: str
    path: Path | None = None

    def store(self) -> LedgerStore:
        return store_for_url(self.url)

    def time(self, value: datetime) -> Any:
        """A datetime as the backend stores it, for raw queries."""
        return to_db(value) if self.backend == "sqlite" else value

    async def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Raw rows, bypassing the store; ``sql`` uses ``?`` placeholders."""
        if self.path is not None:
            async with aiosqlite.connect(self.path) as db:
                return [tuple(row) for row in await db.execute_fetchall(sql, params)]
        conn = await asyncpg.connect(self.url)
        try:
            rows = await conn.fetch(numbered(sql), *params)
        finally:
            await conn.close()
        return [tuple(row) for row in rows]


def sqlite_db(path: Path) -> LedgerDb:
    return LedgerDb("sqlite", f"sqlite:///{path}", path)


@pytest.fixture(params=BACKENDS)
def ledger_db(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerDb:
    if request.param == "sqlite":
        return sqlite_db(tmp_path / "quota.db")
    return LedgerDb("postgresql", request.getfixturevalue("pg_url"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, each test marked ``slow`` goes to the head of a worker's share.

    ``make test`` runs ``--dist worksteal``: the collection is cut into one
    contiguous share per worker, and an idle worker takes tests from the end of a
    busy one's queue, never its head. A slow test deep in a share would start late
    and end the run alone; at the head of a share it starts at once, beside the
    other slow ones. Every worker reorders its collection the same way, as xdist
    requires, and a run without workers keeps the files' order.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if workers < 2 or not slow:
        return
    ordered = [item for item in items if item.get_closest_marker("slow") is None]
    share = len(items) // workers
    # The k-th slow test opens share k % workers (after any earlier ones there).
    places = [((k % workers) * share + k // workers, item) for k, item in enumerate(slow)]
    for place, item in sorted(places, key=lambda pair: pair[0]):
        ordered.insert(place, item)
    items[:] = ordered
