"""One SQLite connection per database file and process, in a thread of its own.

The quota ledger and the job store live in the same file. Each used to hold a
connection of its own, so their writes competed for SQLite's single write lock
inside one process, and a writer that found it taken slept in SQLite's busy
handler (1, 2, 5, 10 ms ...) on a member's path. Here every transaction of the
process goes through one worker thread that owns the only connection: they
queue instead of colliding, and those queued together share one
``BEGIN IMMEDIATE`` and one ``COMMIT`` (group commit), each body inside its own
savepoint so that one failing (a quota refusal) is undone alone. No caller
hears of its result before the commit that makes it durable; if that commit
fails, every body in it fails. Other processes on the file (the CLI, a second
shard) are kept apart by SQLite's locking as before: ``BEGIN IMMEDIATE`` takes
the write lock up front, waiting up to ``busy_timeout``.

A body is a plain function of the ``sqlite3.Connection``, run in the worker
thread from start to end: a caller cancelled before its body started never runs
it; one cancelled later cannot stop it half way. Once a stop is queued, or a
body kills the worker (a ``BaseException``), the queue is closed: later work is
refused at once, and work still in it is answered with an error, never left
waiting.

A committed batch is answered with one ``call_soon_threadsafe`` per event loop
that submitted to it (normally one), not one per body: each costs a write to the
loop's self-pipe and, when the loop is idle, a thread wake-up of ~60-75 µs of
CPU on the VMs the bot runs on (bench/RESULTS.md).

Checkpoints (copying the write-ahead log into the database file, with an
fsync) run in a thread of their own, on a connection of their own, every
``CHECKPOINT_INTERVAL``. Left to SQLite, the commit that took the log past 1000
pages ran it inline, and every transaction queued behind that commit waited
10-20 ms on this kind of disk: a pause in the tail of members' waits
(bench/RESULTS.md). A passive checkpoint never blocks the writer; the
connection's own automatic checkpoint stays on as a backstop, at a threshold
the background one keeps it from reaching.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from queue import SimpleQueue
from typing import Any, TypeVar, cast

from bot.migrate import BUSY_TIMEOUT_MS, CONNECTION_PRAGMAS
from bot.sql import sqlite_database_id

# How many queued bodies one commit may carry: enough that a burst of
# reservations shares few commits, few enough that one batch cannot hold the
# file's write lock (and other processes) for long.
MAX_BATCH = 64
CHECKPOINT_INTERVAL = 1.0  # seconds
# Pages of write-ahead log after which a commit checkpoints inline anyway (SQLite's
# default is 1000): reached only if the background checkpoints stop keeping up.
BACKSTOP_CHECKPOINT_PAGES = 20_000

log = logging.getLogger(__name__)
T = TypeVar("T")
Body = Callable[[sqlite3.Connection], T]


class _Work:
    __slots__ = ("body", "future", "loop", "writes")

    def __init__(self, body: Body[Any], loop: asyncio.AbstractEventLoop, *, writes: bool) -> None:
        self.body = body
        self.writes = writes
        self.loop = loop
        # Created, resolved and cancelled in the loop's thread only; the worker
        # thread merely reads whether it was cancelled (see ``_serve``).
        self.future: asyncio.Future[Any] = loop.create_future()


# A work with its result, or with the exception its caller is to hear instead.
_Outcome = tuple[_Work, Any, BaseException | None]


_STOP = object()


class SqliteWorker:
    """The worker thread and connection for one file; see the module's text."""

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        *,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
    ) -> None:
        self.path = path
        self.commits = 0  # several transactions may share one
        self.checkpoints = 0  # background checkpoints that ran
        # The last one's (busy, log pages, pages copied), as SQLite reports it.
        self.last_checkpoint: tuple[int, int, int] | None = None
        self._queue: SimpleQueue[_Work | object] = SimpleQueue()
        self._users = 0
        self._stopping = threading.Event()
        # Held while work is queued and while the queue is closed (a stop, or the
        # worker dying): nothing can be queued after the queue's last reader left.
        self._closing = threading.Lock()
        self._thread = threading.Thread(
            target=self._serve, args=(conn,), name=f"sqlite-{path.name}", daemon=True
        )
        self._checkpointer = threading.Thread(
            target=self._checkpoint_every,
            args=(checkpoint_interval,),
            name=f"sqlite-checkpoint-{path.name}",
            daemon=True,
        )
        self._thread.start()
        self._checkpointer.start()

    @property
    def database_id(self) -> str:
        return sqlite_database_id(self.path)

    async def write(self, body: Body[T]) -> T:
        return await self._submit(body, writes=True)

    async def read(self, body: Body[T]) -> T:
        return await self._submit(body, writes=False)

    async def _submit(self, body: Body[T], *, writes: bool) -> T:
        work = _Work(body, asyncio.get_running_loop(), writes=writes)
        with self._closing:
            if self._stopping.is_set():  # set by a stop, and by the worker leaving
                raise RuntimeError(f"the SQLite worker for {self.path} has stopped")
            # Wakes the worker thread only if it is waiting for work: one busy
            # with a batch finds this in the queue when it is done.
            self._queue.put(work)
        return cast(T, await work.future)

    async def _stop(self) -> None:
        with self._closing:
            # Queued behind every transaction already submitted; none after it.
            self._queue.put(_STOP)
            self._stopping.set()
        await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self._checkpointer.join)

    def _refuse_the_rest(self) -> None:
        """The worker is leaving: close the queue and answer what is still in it
        (work queued behind a body that killed the worker) with an error, so
        that no caller waits for ever."""
        with self._closing:
            self._stopping.set()
            left: list[_Work] = []
            while not self._queue.empty():
                item = self._queue.get()
                if isinstance(item, _Work):
                    left.append(item)
        if left:
            error = RuntimeError(f"the SQLite worker for {self.path} has stopped")
            _deliver([(work, None, error) for work in left])

    def _checkpoint_every(self, interval: float) -> None:
        try:
            conn = _connect(self.path)
        except sqlite3.Error:
            log.exception("no background checkpoints for %s; SQLite checkpoints inline", self.path)
            return
        try:
            while not self._stopping.wait(interval):
                try:
                    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    # Busy with another process's checkpoint, say: the next one catches up.
                    log.debug("background checkpoint of %s failed", self.path, exc_info=True)
                    continue
                self.last_checkpoint = (int(row[0]), int(row[1]), int(row[2]))
                self.checkpoints += 1
        finally:
            conn.close()

    def _serve(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                item = self._queue.get()
                batch: list[_Work] = []
                stop = False
                while True:
                    if item is _STOP:
                        stop = True
                        break
                    assert isinstance(item, _Work)
                    # Skipped when the caller was cancelled before its turn. A
                    # cancel that lands after this check finds the body running:
                    # it runs to the end and its result is dropped (``_settle``).
                    if not item.future.cancelled():
                        batch.append(item)
                    if len(batch) >= MAX_BATCH or self._queue.empty():
                        break
                    item = self._queue.get()
                if batch:
                    self._run_batch(conn, batch)
                if stop:
                    return
        finally:
            try:
                conn.close()
            finally:
                self._refuse_the_rest()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Work]) -> None:
        outcomes: list[_Outcome] = []
        alone = len(batch) == 1
        try:
            conn.execute("BEGIN IMMEDIATE" if any(work.writes for work in batch) else "BEGIN")
            for work in batch:
                if alone:
                    # No savepoint needed: a failure rolls the whole transaction back.
                    outcomes.append((work, work.body(conn), None))
                    continue
                conn.execute("SAVEPOINT body")
                try:
                    result = work.body(conn)
                except Exception as error:  # noqa: BLE001 - handed to its caller below
                    conn.execute("ROLLBACK TO body")
                    conn.execute("RELEASE body")
                    outcomes.append((work, None, error))
                else:
                    conn.execute("RELEASE body")
                    outcomes.append((work, result, None))
            conn.execute("COMMIT")
            self.commits += 1
        except BaseException as error:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            finally:
                # Even if the ROLLBACK fails too, the callers hear of the failure
                # rather than wait for ever.
                _deliver([(work, None, error) for work in batch])
            if not isinstance(error, Exception):
                raise
            return
        _deliver(outcomes)


def _deliver(outcomes: list[_Outcome]) -> None:
    """Hand a batch's outcomes to their callers, one loop callback per event loop."""
    loop = outcomes[0][0].loop
    if all(work.loop is loop for work, _, _ in outcomes):
        by_loop = {loop: outcomes}
    else:
        by_loop = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, theirs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, theirs)
        except RuntimeError:
            # That loop is closed, and no one is left on it to hear: the worker
            # goes on serving the others.
            log.debug("an event loop closed before its %d results came", len(theirs))


def _settle(outcomes: list[_Outcome]) -> None:
    # In the loop's thread, so nothing can cancel a future between the check and the set.
    for work, result, failure in outcomes:
        future = work.future
        if future.done():
            continue  # cancelled while its body ran: the result is dropped
        if failure is None:
            future.set_result(result)
        elif isinstance(failure, StopIteration):
            # asyncio futures refuse it (TypeError), which would leave the rest
            # of the batch unanswered; a coroutine raising it becomes this too.
            converted = RuntimeError(f"a SQLite body raised {failure!r}")
            converted.__cause__ = failure
            future.set_exception(converted)
        else:
            future.set_exception(failure)


def _connect(path: Path) -> sqlite3.Connection:
    # The file is in WAL mode already (``prepare_connection`` ran on it, and the
    # mode is stored in the file); the other settings are per connection, as there.
    # isolation_level=None: every transaction here is an explicit BEGIN.
    conn = sqlite3.connect(
        path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        for pragma in CONNECTION_PRAGMAS:
            conn.execute(pragma)
        conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_CHECKPOINT_PAGES}")
    except BaseException:
        conn.close()
        raise
    return conn


# One worker per file in this process, shared by everything that opens it.
_shared: dict[Path, SqliteWorker] = {}
_shared_lock = threading.Lock()


async def acquire(path: Path) -> SqliteWorker:
    """The process's worker for ``path`` (migrated already), started on first use."""
    key = await asyncio.to_thread(path.resolve)
    with _shared_lock:
        worker = _shared.get(key)
        if worker is not None:
            worker._users += 1
            return worker
    conn = await asyncio.to_thread(_connect, key)
    with _shared_lock:
        worker = _shared.get(key)
        spare = worker is not None  # another opener won the race
        if worker is None:
            worker = _shared[key] = SqliteWorker(key, conn)
        worker._users += 1
    if spare:
        await asyncio.to_thread(conn.close)
    return worker


async def release(worker: SqliteWorker) -> None:
    """Give the worker back; the last user stops it after what is queued."""
    with _shared_lock:
        worker._users -= 1
        if worker._users > 0:
            return
        if _shared.get(worker.path) is worker:
            del _shared[worker.path]
    await worker._stop()
