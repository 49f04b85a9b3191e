"""How the SQLite worker hands a committed batch back to its callers' event loops.

Each test holds the worker thread busy with one body, queues a batch behind it,
and lets it go, so that what shares a commit is known rather than left to timing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bot import sqlite_worker
from bot.sqlite_worker import SqliteWorker

T = TypeVar("T")


class Hold:
    """A body that keeps the worker thread busy until the test lets it go."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.released = threading.Event()

    def __call__(self, conn: sqlite3.Connection) -> None:
        self.started.set()
        assert self.released.wait(10), "never released"


class WorkerCallbacks:
    """Counts the callbacks the worker thread schedules on one event loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, worker: SqliteWorker, mp: pytest.MonkeyPatch
    ) -> None:
        self.count = 0
        original = loop.call_soon_threadsafe

        def counting(callback: Callable[..., object], *args: Any, context: Any = None) -> Any:
            # Executor threads (asyncio.to_thread) call it too; only the worker's count.
            if threading.current_thread() is worker._thread:
                self.count += 1
            return original(callback, *args, context=context)

        mp.setattr(loop, "call_soon_threadsafe", counting)


def insert(value: str) -> Callable[[sqlite3.Connection], str]:
    def body(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t VALUES (?)", (value,))
        return value

    return body


async def stored(worker: SqliteWorker) -> set[str]:
    rows = await worker.read(lambda conn: conn.execute("SELECT x FROM t").fetchall())
    return {row[0] for row in rows}


async def answered(awaitable: Awaitable[T]) -> T:
    """A lost delivery fails the test instead of hanging it."""
    return await asyncio.wait_for(awaitable, 10)


async def queued(worker: SqliteWorker, count: int) -> None:
    """Until ``count`` works wait in the worker's queue (behind a ``Hold``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while worker._queue.qsize() < count:
        assert loop.time() < deadline, f"{worker._queue.qsize()} queued, not {count}"
        await asyncio.sleep(0)


async def hold(worker: SqliteWorker) -> tuple[Hold, asyncio.Task[None]]:
    held = Hold()
    task = asyncio.create_task(worker.write(held))
    assert await asyncio.to_thread(held.started.wait, 10)
    return held, task


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[SqliteWorker]:
    acquired = await sqlite_worker.acquire(tmp_path / "bot.sqlite")
    try:
        await acquired.write(lambda conn: conn.execute("CREATE TABLE t (x TEXT PRIMARY KEY)"))
        yield acquired
    finally:
        await sqlite_worker.release(acquired)


async def test_a_committed_batch_wakes_the_loop_once(
    worker: SqliteWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    callbacks = WorkerCallbacks(loop, worker, monkeypatch)
    commits = worker.commits
    held, blocker = await hold(worker)
    values = [f"v{n}" for n in range(10)]
    tasks = [asyncio.create_task(worker.write(insert(value))) for value in values]
    await queued(worker, len(values))
    held.released.set()
    await answered(blocker)
    assert await answered(asyncio.gather(*tasks)) == values
    # The blocker's commit and the batch's: one loop callback each.
    assert worker.commits == commits + 2
    assert callbacks.count == 2
    assert await stored(worker) == set(values)


async def test_a_batch_from_two_loops_wakes_each_once(
    worker: SqliteWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    other = asyncio.new_event_loop()
    runner = threading.Thread(target=other.run_forever, name="other-loop")
    runner.start()
    try:
        here = WorkerCallbacks(loop, worker, monkeypatch)
        there = WorkerCallbacks(other, worker, monkeypatch)
        held, blocker = await hold(worker)
        mine = [asyncio.create_task(worker.write(insert(f"here{n}"))) for n in range(3)]
        theirs = [
            asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(worker.write(insert(f"there{n}")), other)
            )
            for n in range(3)
        ]
        await queued(worker, 6)
        commits = worker.commits
        held.released.set()
        await answered(blocker)
        assert await answered(asyncio.gather(*mine)) == ["here0", "here1", "here2"]
        assert await answered(asyncio.gather(*theirs)) == ["there0", "there1", "there2"]
        assert worker.commits == commits + 2
        assert (here.count, there.count) == (2, 1)  # the blocker's, then the batch's
    finally:
        other.call_soon_threadsafe(other.stop)
        await asyncio.to_thread(runner.join, 10)
        other.close()


async def test_a_caller_cancelled_before_its_turn_never_runs_its_body(
    worker: SqliteWorker,
) -> None:
    held, blocker = await hold(worker)
    first = asyncio.create_task(worker.write(insert("first")))
    dropped = asyncio.create_task(worker.write(insert("dropped")))
    last = asyncio.create_task(worker.write(insert("last")))
    await queued(worker, 3)
    dropped.cancel()
    held.released.set()
    await answered(blocker)
    assert list(await answered(asyncio.gather(first, last))) == ["first", "last"]
    with pytest.raises(asyncio.CancelledError):
        await answered(dropped)
    assert await stored(worker) == {"first", "last"}


async def test_a_caller_cancelled_while_its_body_runs_leaves_the_batch_answered(
    worker: SqliteWorker,
) -> None:
    held, blocker = await hold(worker)
    running = Hold()

    def slow(conn: sqlite3.Connection) -> str:
        running(conn)
        return insert("slow")(conn)

    # First in the batch: delivering its dropped result must not stop the rest.
    cancelled = asyncio.create_task(worker.write(slow))
    others = [asyncio.create_task(worker.write(insert(f"v{n}"))) for n in range(3)]
    await queued(worker, 4)
    held.released.set()
    await answered(blocker)
    assert await asyncio.to_thread(running.started.wait, 10)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await answered(cancelled)
    running.released.set()
    assert await answered(asyncio.gather(*others)) == ["v0", "v1", "v2"]
    # Cancelled too late to stop it, the body ran to its end and was committed.
    assert await stored(worker) == {"slow", "v0", "v1", "v2"}


async def test_a_failing_body_is_undone_alone_and_the_batch_still_commits(
    worker: SqliteWorker,
) -> None:
    held, blocker = await hold(worker)

    def duplicate(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t VALUES ('partial')")
        conn.execute("INSERT INTO t VALUES ('a')")  # violates the primary key
        return "never"

    tasks = [
        asyncio.create_task(worker.write(body)) for body in (insert("a"), duplicate, insert("b"))
    ]
    await queued(worker, 3)
    held.released.set()
    await answered(blocker)
    a, failed, b = await answered(asyncio.gather(*tasks, return_exceptions=True))
    assert (a, b) == ("a", "b")
    assert isinstance(failed, sqlite3.IntegrityError)
    assert await stored(worker) == {"a", "b"}


async def test_a_body_raising_stop_iteration_leaves_the_batch_answered(
    worker: SqliteWorker,
) -> None:
    held, blocker = await hold(worker)

    def exhausted(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t VALUES ('undone')")
        return str(next(iter(())))

    # First in the batch: an asyncio future refuses StopIteration outright.
    tasks = [
        asyncio.create_task(worker.write(body)) for body in (exhausted, insert("a"), insert("b"))
    ]
    await queued(worker, 3)
    held.released.set()
    await answered(blocker)
    failed, a, b = await answered(asyncio.gather(*tasks, return_exceptions=True))
    assert (a, b) == ("a", "b")
    assert isinstance(failed, RuntimeError)
    assert isinstance(failed.__cause__, StopIteration)
    assert await stored(worker) == {"a", "b"}


async def test_a_failed_commit_fails_the_whole_batch_with_one_wake(
    worker: SqliteWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    await worker.write(
        lambda conn: conn.execute(
            "CREATE TABLE child (p TEXT REFERENCES t (x) DEFERRABLE INITIALLY DEFERRED)"
        )
    )
    callbacks = WorkerCallbacks(asyncio.get_running_loop(), worker, monkeypatch)
    held, blocker = await hold(worker)
    commits = worker.commits
    innocent = [asyncio.create_task(worker.write(insert(f"v{n}"))) for n in range(3)]
    # Checked only at COMMIT: the whole batch fails with it.
    guilty = asyncio.create_task(
        worker.write(lambda conn: conn.execute("INSERT INTO child VALUES ('nobody')").rowcount)
    )
    await queued(worker, 4)
    held.released.set()
    await answered(blocker)
    results = await answered(asyncio.gather(*innocent, guilty, return_exceptions=True))
    assert all(isinstance(r, sqlite3.IntegrityError) for r in results), results
    assert worker.commits == commits + 1  # the blocker's only
    assert callbacks.count == 2
    assert await stored(worker) == set()


async def test_stopping_answers_what_was_queued_first(tmp_path: Path) -> None:
    worker = await sqlite_worker.acquire(tmp_path / "bot.sqlite")
    released = False
    try:
        await worker.write(lambda conn: conn.execute("CREATE TABLE t (x TEXT PRIMARY KEY)"))
        held, blocker = await hold(worker)
        tasks = [asyncio.create_task(worker.write(insert(f"v{n}"))) for n in range(5)]
        await queued(worker, 5)
        stopping = asyncio.create_task(sqlite_worker.release(worker))
        released = True
        await queued(worker, 6)  # the stop, behind the five
        held.released.set()
        await answered(stopping)
        await answered(blocker)
        assert [task.result() for task in tasks] == [f"v{n}" for n in range(5)]
    finally:
        if not released:
            await sqlite_worker.release(worker)
    with pytest.raises(RuntimeError, match="stopped"):
        await worker.read(lambda conn: None)
    with sqlite3.connect(tmp_path / "bot.sqlite") as conn:
        assert {row[0] for row in conn.execute("SELECT x FROM t")} == {f"v{n}" for n in range(5)}


async def test_a_result_for_a_closed_loop_does_not_stop_the_worker(
    worker: SqliteWorker,
) -> None:
    held, blocker = await hold(worker)
    gone = asyncio.new_event_loop()
    # As a caller on that loop would have queued it, before the loop was closed.
    worker._queue.put(sqlite_worker._Work(insert("orphan"), gone, writes=True))
    gone.close()
    mine = asyncio.create_task(worker.write(insert("mine")))
    await queued(worker, 2)
    held.released.set()
    await answered(blocker)
    assert await answered(mine) == "mine"
    assert worker._thread.is_alive()
    assert await answered(worker.write(insert("after"))) == "after"
    assert await stored(worker) == {"orphan", "mine", "after"}


class Halt(BaseException):
    pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_base_exception_fails_its_batch_and_stops_the_worker(tmp_path: Path) -> None:
    worker = await sqlite_worker.acquire(tmp_path / "bot.sqlite")
    try:
        await worker.write(lambda conn: conn.execute("CREATE TABLE t (x TEXT PRIMARY KEY)"))
        held, blocker = await hold(worker)

        def halt(conn: sqlite3.Connection) -> None:
            raise Halt

        tasks = [asyncio.create_task(worker.write(body)) for body in (insert("a"), halt)]
        await queued(worker, 2)
        held.released.set()
        await answered(blocker)
        results = await answered(asyncio.gather(*tasks, return_exceptions=True))
        assert all(isinstance(r, Halt) for r in results), results
        await asyncio.to_thread(worker._thread.join, 10)
        assert not worker._thread.is_alive()
        with pytest.raises(RuntimeError, match="stopped"):
            await worker.write(insert("b"))
    finally:
        await sqlite_worker.release(worker)
    with sqlite3.connect(tmp_path / "bot.sqlite") as conn:
        assert list(conn.execute("SELECT x FROM t")) == []


async def test_work_submitted_once_a_stop_is_queued_is_refused_at_once(tmp_path: Path) -> None:
    """The worker still runs what was queued before the stop; anything later
    would sit behind the stop for ever, so it is refused instead."""
    worker = await sqlite_worker.acquire(tmp_path / "bot.sqlite")
    released = False
    try:
        await worker.write(lambda conn: conn.execute("CREATE TABLE t (x TEXT PRIMARY KEY)"))
        held, blocker = await hold(worker)
        before = asyncio.create_task(worker.write(insert("before")))
        await queued(worker, 1)
        stopping = asyncio.create_task(sqlite_worker.release(worker))
        released = True
        await queued(worker, 2)  # the stop, behind it
        with pytest.raises(RuntimeError, match="stopped"):
            await answered(worker.write(insert("after")))
        held.released.set()
        await answered(stopping)
        await answered(blocker)
        assert before.result() == "before"
    finally:
        if not released:
            await sqlite_worker.release(worker)
    with sqlite3.connect(tmp_path / "bot.sqlite") as conn:
        assert {row[0] for row in conn.execute("SELECT x FROM t")} == {"before"}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_work_queued_behind_a_body_that_kills_the_worker_is_answered(
    tmp_path: Path,
) -> None:
    worker = await sqlite_worker.acquire(tmp_path / "bot.sqlite")
    try:
        halting, go = threading.Event(), threading.Event()

        def halt(conn: sqlite3.Connection) -> None:
            halting.set()
            assert go.wait(10), "never let go"
            raise Halt

        dying = asyncio.create_task(worker.write(halt))
        assert await asyncio.to_thread(halting.wait, 10)
        # Queued while the fatal body runs: in no batch of the worker's.
        late = asyncio.create_task(worker.write(lambda conn: None))
        await queued(worker, 1)
        go.set()
        with pytest.raises(Halt):
            await answered(dying)
        with pytest.raises(RuntimeError, match="stopped"):
            await answered(late)
    finally:
        await sqlite_worker.release(worker)
