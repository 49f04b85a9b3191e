"""Accepted jobs in SQLite, so buttons on a result work after a restart."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

from bot import sqlite_worker
from bot.config import Settings
from bot.jobs import Job, Posted, summarise_references
from bot.migrate import (
    apply_migrations,
    apply_postgres_migrations,
    is_postgres_url,
    pg_errors,
    prepare_connection,
)
from bot.models import GenerationRequest, Mode, ReferenceImage, Requester, StoredImage
from bot.quota.base import JournalStep, Reservation
from bot.sql import numbered, postgres_database_id
from bot.sqlite_worker import SqliteWorker

# Statuses of a job that ended without images: "failed", or on its way there
# while its member is told why (Pipeline._end_unmade).
UNMADE = frozenset({"failed", "failing", "refusing"})


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    guild_id: str
    channel_id: str | None
    user_id: str
    provider: str
    request: GenerationRequest
    status: str
    cost: int
    charged: int | None
    seed: int | None
    images: tuple[StoredImage, ...]
    message_id: str | None
    created_at: datetime
    reservation: Reservation | None = None
    provider_job_id: str | None = None
    provider_fetch_url: str | None = None
    outputs: tuple[str, ...] = ()
    model: str | None = None  # the model that made the images, once delivered
    # Why it failed; while "failing", the words its member is (still) to be told.
    error: str | None = None
    idempotency_key: str | None = None  # the interaction's id, for a job of one

    def image(self, index: int) -> StoredImage | None:
        return next((image for image in self.images if image.index == index), None)


def request_to_dict(request: GenerationRequest) -> dict[str, Any]:
    """Everything needed to run the request again, minus image bytes (and there are
    no secrets in a request); also what result.json shows."""
    return {
        "mode": request.mode.value,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "references": list(summarise_references(request)),
        "provider": request.provider,
        "model": request.model,
        "samples": request.samples,
        "seed": request.seed,
        "width": request.width,
        "height": request.height,
        "aspect_ratio": request.aspect_ratio,
        "size": request.size,
        "safety_checker": request.safety_checker,
        "options": dict(request.options),
        "style": request.style,
        "requester": {
            "guild_id": request.requester.guild_id,
            "user_id": request.requester.user_id,
            "roles": list(request.requester.roles),
            "channel_id": request.requester.channel_id,
        },
        "private": request.private,
    }


def request_to_json(request: GenerationRequest) -> str:
    return json.dumps(request_to_dict(request))


def request_from_json(text: str) -> GenerationRequest:
    data: dict[str, Any] = json.loads(text)
    requester = data.get("requester") or {}
    return GenerationRequest(
        mode=Mode(data["mode"]),
        prompt=data["prompt"],
        negative_prompt=data.get("negative_prompt"),
        references=tuple(
            ReferenceImage(
                data=None,
                url=ref.get("url"),
                mime=ref.get("mime"),
                width=ref.get("width"),
                height=ref.get("height"),
                filename=ref.get("filename") or "image",
            )
            for ref in data.get("references", [])
        ),
        provider=data.get("provider"),
        model=data.get("model"),
        samples=int(data.get("samples", 1)),
        seed=data.get("seed"),
        width=data.get("width"),
        height=data.get("height"),
        aspect_ratio=data.get("aspect_ratio"),
        size=data.get("size"),
        safety_checker=data.get("safety_checker"),
        options=data.get("options") or {},
        style=data.get("style"),
        private=bool(data.get("private", False)),
        requester=Requester(
            guild_id=str(requester.get("guild_id", "local")),
            user_id=str(requester.get("user_id", "local")),
            roles=tuple(requester.get("roles", ())),
            channel_id=requester.get("channel_id"),
        ),
    )


# One read for fetch_many: the statement and its parameters.
Query = tuple[str, Sequence[Any]]
ALLOWED_CHANNELS_SQL = "SELECT channel_id FROM guild_channels WHERE guild_id = ?"


class _Database(Protocol):
    """The two calls the job store needs, with ``?`` placeholders on either backend."""

    @property
    def database_id(self) -> str: ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns the number of rows it changed."""
        ...

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]: ...

    async def fetch_many(self, queries: Sequence[Query]) -> list[list[Sequence[Any]]]:
        """Several reads in one round trip and one snapshot, in order."""
        ...

    async def adopt(self, me: str, now: float) -> list[str]:
        """In one transaction: mark live instances whose lease ran out as expired,
        move every unfinished job whose owner is not live, and the reservations
        those jobs hold, to ``me``, then delete the instances that are not live
        and own nothing any more. Returns the job ids taken."""
        ...


# Marking first matters: an expired instance's renewal (a conditional update of
# the same row) then fails, so a process that was only stalled learns that its
# jobs were taken instead of carrying on beside their adopter.
_EXPIRE = "UPDATE instances SET state = 'expired' WHERE state = 'live' AND expires_at < ?"
# An adopter whose own lease has just run out (a stalled process) takes nothing:
# jobs under its expired id would be orphans again at once, adopted a second
# time by the next look while it still worked on them. It learns at its next
# renewal and adopts under a new lease.
_STILL_LIVE = "SELECT 1 FROM instances WHERE id = ? AND state = 'live'"
_ORPHANS = (
    "SELECT jobs.id FROM jobs WHERE jobs.status NOT IN ('delivered', 'failed')"
    " AND NOT EXISTS (SELECT 1 FROM instances"
    " WHERE instances.id = jobs.owner_instance AND instances.state = 'live')"
    " ORDER BY jobs.created_at"
)
# Every start registers an instance, so without this the table grows by a row a
# start, forever. A missing owner counts as not live everywhere (adoption, a
# renewal), so deleting a row changes nothing but what an operator can read:
# the row of an instance that still owns an unfinished job or a held
# reservation stays (it says which host and pid left it) until the work has
# moved on or the reservation has ended; a live row is never touched.
_PRUNABLE = (
    "SELECT instances.id FROM instances WHERE instances.state <> 'live'"
    " AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.owner_instance = instances.id"
    " AND jobs.status NOT IN ('delivered', 'failed'))"
    " AND NOT EXISTS (SELECT 1 FROM quota_entries"
    " WHERE quota_entries.owner_instance = instances.id AND quota_entries.state = 'reserved')"
)
_PRUNE = f"DELETE FROM instances WHERE id IN ({_PRUNABLE})"  # noqa: S608 - constant SQL
_PRUNE_SKIP_LOCKED = f"DELETE FROM instances WHERE id IN ({_PRUNABLE} FOR UPDATE SKIP LOCKED)"  # noqa: S608


class _Sqlite:
    """Statements on the file's shared worker (``bot.sqlite_worker``), so that the
    job journal's writes share commits with the ledger's instead of competing
    with them for the file's write lock."""

    def __init__(self, worker: SqliteWorker) -> None:
        self._worker = worker

    @property
    def database_id(self) -> str:
        return self._worker.database_id

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        values = tuple(params)
        return await self._worker.write(lambda conn: conn.execute(sql, values).rowcount)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        values = tuple(params)
        rows = await self._worker.read(lambda conn: conn.execute(sql, values).fetchall())
        return [tuple(row) for row in rows]

    async def fetch_many(self, queries: Sequence[Query]) -> list[list[Sequence[Any]]]:
        pending = [(sql, tuple(params)) for sql, params in queries]

        def body(conn: sqlite3.Connection) -> list[list[Sequence[Any]]]:
            return [
                [tuple(row) for row in conn.execute(sql, values).fetchall()]
                for sql, values in pending
            ]

        return await self._worker.read(body)

    async def adopt(self, me: str, now: float) -> list[str]:
        # SQLite has one writer at a time (BEGIN IMMEDIATE): two processes on the
        # file adopt one after the other, and the second finds nothing left.
        def body(conn: sqlite3.Connection) -> list[str]:
            conn.execute(_EXPIRE, (now,))
            if conn.execute(_STILL_LIVE, (me,)).fetchone() is None:
                return []  # see _STILL_LIVE
            ids = [str(row[0]) for row in conn.execute(_ORPHANS).fetchall()]
            for job_id in ids:
                conn.execute("UPDATE jobs SET owner_instance = ? WHERE id = ?", (me, job_id))
                conn.execute(
                    "UPDATE quota_entries SET owner_instance = ?"
                    " WHERE job_id = ? AND state = 'reserved'",
                    (me, job_id),
                )
            conn.execute(_PRUNE)
            return ids

        return await self._worker.write(body)


class _Postgres:
    def __init__(self, pool: Any, url: str) -> None:
        self._pool = pool
        self.database_id = postgres_database_id(url)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        status: str = await self._pool.execute(numbered(sql), *params)
        count = status.rsplit(" ", 1)[-1]  # "UPDATE 1", "INSERT 0 1"
        return int(count) if count.isdigit() else 0

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return [tuple(row) for row in await self._pool.fetch(numbered(sql), *params)]

    async def fetch_many(self, queries: Sequence[Query]) -> list[list[Sequence[Any]]]:
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            return [
                [tuple(row) for row in await conn.fetch(numbered(sql), *params)]
                for sql, params in queries
            ]

    async def adopt(self, me: str, now: float) -> list[str]:
        # SKIP LOCKED: a job another adopter is taking right now is left to it;
        # once that one commits, the job's owner is live and no longer matches.
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(numbered(_EXPIRE), now)
            if await conn.fetchrow(numbered(_STILL_LIVE), me) is None:
                return []  # see _STILL_LIVE
            rows = await conn.fetch(_ORPHANS + " FOR UPDATE OF jobs SKIP LOCKED")
            ids = [str(row[0]) for row in rows]
            if ids:
                await conn.execute(
                    "UPDATE jobs SET owner_instance = $1 WHERE id = ANY($2::text[])", me, ids
                )
                await conn.execute(
                    "UPDATE quota_entries SET owner_instance = $1"
                    " WHERE job_id = ANY($2::text[]) AND state = 'reserved'",
                    me,
                    ids,
                )
            # SKIP LOCKED again: a row another adopter is deleting right now is
            # left to it rather than waited for.
            await conn.execute(_PRUNE_SKIP_LOCKED)
            return ids


class JobStore:
    def __init__(self, db: _Database) -> None:
        self._db = db
        # The lease (bot.lease) new jobs are admitted under; None without one.
        self.instance: str | None = None

    @property
    def database_id(self) -> str:
        """The database the journal is in, as ``Ledger.database_id`` names it."""
        return self._db.database_id

    @property
    def database(self) -> _Database:
        """The connection, for stores of other tables in the same database."""
        return self._db

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[JobStore]:
        if is_postgres_url(settings.database_url):
            assert settings.database_url is not None
            async with cls.connect_postgres(settings.database_url) as store:
                yield store
            return
        async with cls.connect(settings.sqlite_path) as store:
            yield store

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, path: Path) -> AsyncIterator[JobStore]:
        async with aiosqlite.connect(path, isolation_level=None) as conn:
            await prepare_connection(conn)
            await apply_migrations(conn)
        worker = await sqlite_worker.acquire(path)
        try:
            yield cls(_Sqlite(worker))
        finally:
            await sqlite_worker.release(worker)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect_postgres(cls, url: str) -> AsyncIterator[JobStore]:
        import asyncpg  # type: ignore[import-untyped]

        with pg_errors(url):
            pool = await asyncpg.create_pool(url, min_size=1, max_size=5, command_timeout=60)
        try:
            async with pool.acquire() as conn:
                await apply_postgres_migrations(conn)
            yield cls(_Postgres(pool, url))
        finally:
            await pool.close()

    # --- the pipeline's journal ---------------------------------------------
    async def admit(self, job: Job) -> bool:
        return await self.record_accepted(job.id, job.request, job.provider, job.cost)

    def admission(self, job: Job) -> JournalStep:
        """``admit`` as a step a ledger transaction can carry: it changes no row
        when the job's idempotency key is taken."""
        return self._accepted(job.id, job.request, job.provider, job.cost)

    async def record(self, job: Job, status: str, **fields: Any) -> None:
        step = self.step(job, status, **fields)
        await self._db.execute(step.sql, step.params)

    def step(self, job: Job, status: str, **fields: Any) -> JournalStep:
        """``record`` as a step a ledger transaction can carry."""
        columns: dict[str, object] = {"status": status, "updated_at": _now()}
        if "reservation" in fields:
            columns["reservation_json"] = reservation_to_json(fields["reservation"])
        if "provider" in fields:
            columns["provider"] = fields["provider"]
        if "provider_job_id" in fields:
            columns["provider_job_id"] = fields["provider_job_id"]
        if "fetch_url" in fields:
            columns["provider_fetch_url"] = fields["fetch_url"]
        if "outputs" in fields:
            columns["outputs_json"] = json.dumps(list(fields["outputs"]))
        if "error" in fields:
            columns["error"] = str(fields["error"])[:500]
        posted: Posted | None = fields.get("posted")
        if posted is not None:
            columns["charged"] = posted.charged
            columns["seed"] = posted.seed
            columns["images_json"] = json.dumps([_image_to_dict(i) for i in posted.images])
            columns["message_id"] = posted.message_id
            columns["model"] = posted.model
        assignments = ", ".join(f"{name} = ?" for name in columns)
        where, params = "id = ?", (*columns.values(), job.id)
        if "while_status" in fields:
            # Only over this process's own last step: never over an adopter's.
            where, params = "id = ? AND status = ?", (*params, fields["while_status"])
        return JournalStep(
            f"UPDATE jobs SET {assignments} WHERE {where}",  # noqa: S608 - fixed column names
            params,
        )

    async def unfinished(self) -> list[JobRecord]:
        """Jobs a previous process accepted and never ended: to resume or refund."""
        rows = await self._db.fetch(
            f"SELECT {_RECORD_COLUMNS} FROM jobs"  # noqa: S608 - a constant column list
            " WHERE status NOT IN ('delivered', 'failed') ORDER BY created_at"
        )
        return [_record(row) for row in rows]

    async def record_accepted(
        self, job_id: str, request: GenerationRequest, provider: str, cost: int
    ) -> bool:
        """Record a job; False when its idempotency key (interaction id) is already
        taken, i.e. a duplicate event or a double click."""
        step = self._accepted(job_id, request, provider, cost)
        return await self._db.execute(step.sql, step.params) == 1

    def _accepted(
        self, job_id: str, request: GenerationRequest, provider: str, cost: int
    ) -> JournalStep:
        now = _now()
        return JournalStep(
            "INSERT INTO jobs (id, idempotency_key, guild_id, channel_id, user_id,"
            " mode, provider, request_json, status, cost, created_at, updated_at,"
            " owner_instance)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'accepted', ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (
                job_id,
                request.idempotency_key or job_id,
                request.requester.guild_id,
                request.requester.channel_id,
                request.requester.user_id,
                request.mode.value,
                provider,
                request_to_json(request),
                cost,
                now,
                now,
                self.instance,
            ),
        )

    # --- leases (bot.lease) ----------------------------------------------------
    async def register_instance(
        self, instance: str, host: str, pid: int, now: float, expires: float
    ) -> None:
        await self._db.execute(
            "INSERT INTO instances (id, host, pid, state, started_at, renewed_at, expires_at)"
            " VALUES (?, ?, ?, 'live', ?, ?, ?)",
            (instance, host, pid, now, now, expires),
        )

    async def renew_instance(self, instance: str, now: float, expires: float) -> bool:
        """False when the lease was taken over (or ended): the instance is gone."""
        changed = await self._db.execute(
            "UPDATE instances SET renewed_at = ?, expires_at = ? WHERE id = ? AND state = 'live'",
            (now, expires, instance),
        )
        return changed == 1

    async def release_instance(self, instance: str, now: float) -> None:
        """A clean stop: whatever the instance still owns is adoptable at once."""
        await self._db.execute(
            "UPDATE instances SET state = 'stopped', expires_at = ?"
            " WHERE id = ? AND state = 'live'",
            (now, instance),
        )

    async def adopt(self, me: str, now: float) -> list[JobRecord]:
        """Take the unfinished jobs of every instance that is not live (lease run
        out, stopped, or never recorded), with their reservations; forget the
        instances that are not live and own nothing any more."""
        ids = await self._db.adopt(me, now)
        records = [await self.get(job_id) for job_id in ids]
        return [record for record in records if record is not None]

    async def get(self, job_id: str) -> JobRecord | None:
        rows = await self._db.fetch(
            f"SELECT {_RECORD_COLUMNS} FROM jobs WHERE id = ?",  # noqa: S608 - constant columns
            (job_id,),
        )
        return _record(rows[0]) if rows else None

    async def allowed_channels(self, guild_id: str) -> set[str]:
        rows = await self._db.fetch(ALLOWED_CHANNELS_SQL, (guild_id,))
        return {str(row[0]) for row in rows}

    async def allow_channel(self, guild_id: str, channel_id: str, by: str) -> None:
        await self._db.execute(
            "INSERT INTO guild_channels (guild_id, channel_id, added_by, added_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (guild_id, channel_id, by, _now()),
        )

    async def disallow_channel(self, guild_id: str, channel_id: str) -> None:
        await self._db.execute(
            "DELETE FROM guild_channels WHERE guild_id = ? AND channel_id = ?",
            (guild_id, channel_id),
        )

    async def log_channel(self, guild_id: str) -> str | None:
        rows = list(
            await self._db.fetch(
                "SELECT log_channel_id FROM guild_settings WHERE guild_id = ?", (guild_id,)
            )
        )
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    async def set_log_channel(self, guild_id: str, channel_id: str | None) -> None:
        await self._db.execute(
            "INSERT INTO guild_settings (guild_id, log_channel_id, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (guild_id) DO UPDATE SET log_channel_id = excluded.log_channel_id,"
            " updated_at = excluded.updated_at",
            (guild_id, channel_id, _now()),
        )


_RECORD_COLUMNS = (
    "id, guild_id, channel_id, user_id, provider, request_json, status, cost, charged, seed,"
    " images_json, message_id, created_at, reservation_json, provider_job_id,"
    " provider_fetch_url, outputs_json, model, error, idempotency_key"
)


def _record(row: Sequence[Any]) -> JobRecord:
    images = tuple(StoredImage(**item) for item in json.loads(row[10] or "[]"))
    return JobRecord(
        id=row[0],
        guild_id=row[1],
        channel_id=row[2],
        user_id=row[3],
        provider=row[4],
        request=request_from_json(row[5]),
        status=row[6],
        cost=row[7],
        charged=row[8],
        seed=row[9],
        images=images,
        message_id=row[11],
        created_at=datetime.fromisoformat(row[12]),
        reservation=reservation_from_json(row[13]) if row[13] else None,
        provider_job_id=row[14],
        provider_fetch_url=row[15],
        outputs=tuple(json.loads(row[16] or "[]")),
        model=row[17],
        error=row[18],
        idempotency_key=row[19],
    )


def job_of(record: JobRecord) -> Job:
    """The pipeline's view of a recorded job, for resuming it."""
    samples = max(record.request.samples, 1)
    return Job(
        id=record.id,
        request=record.request,
        original=record.request,
        provider=record.provider,
        cost=record.cost,
        unit_cost=record.cost // samples,
        started_at=time.monotonic(),
    )


def reservation_to_json(reservation: Reservation) -> str:
    # A flat dataclass: a shallow walk (asdict deep-copies every value, on every job).
    data = {
        item.name: _json_value(getattr(reservation, item.name))
        for item in dataclasses.fields(reservation)
    }
    return json.dumps(data)


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def reservation_from_json(text: str) -> Reservation:
    data = json.loads(text)
    for item in dataclasses.fields(Reservation):
        value = data.get(item.name)
        if isinstance(value, str) and item.name in ("created_at", "period_start", "resets_at"):
            data[item.name] = datetime.fromisoformat(value)
    known = {item.name for item in dataclasses.fields(Reservation)}
    return Reservation(**{key: value for key, value in data.items() if key in known})


def _image_to_dict(image: StoredImage) -> dict[str, Any]:
    return {
        "index": image.index,
        "mime": image.mime,
        "width": image.width,
        "height": image.height,
        "url": image.url,
        "path": image.path,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat()
