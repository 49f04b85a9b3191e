"""``python -m bench --steps``: the wrapper that times each step of a job."""

from __future__ import annotations

import asyncio
import sys

import pytest

from bench._steps import BASELINE_STEPS, STEPS, StepTimer, steps_table


class Worker:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def work(self, value: int) -> int:
        await self.release.wait()
        return value * 2

    async def fail(self) -> None:
        raise ValueError("refused")


TARGETS = [("working", f"{__name__}:Worker.work"), ("failing", f"{__name__}:Worker.fail")]


async def test_each_call_is_timed_under_its_label_until_uninstalled() -> None:
    timer = StepTimer(TARGETS)
    timer.install()
    try:
        worker = Worker()
        calls = [asyncio.create_task(worker.work(n)) for n in range(3)]
        await asyncio.sleep(0)  # all three are waiting: nothing is recorded yet
        assert timer.take() == {}
        worker.release.set()
        assert await asyncio.gather(*calls) == [0, 2, 4]
        with pytest.raises(ValueError, match="refused"):
            await worker.fail()  # a step that fails is timed too
        samples = timer.take()
        assert sorted(samples) == ["failing", "working"]
        assert len(samples["working"]) == 3 and len(samples["failing"]) == 1
        assert all(duration >= 0 for duration in samples["working"])
        assert timer.take() == {}  # taken: the next window starts empty
    finally:
        timer.uninstall()
    assert not hasattr(Worker.work, "__wrapped__")
    assert await worker.work(5) == 10  # the released worker, untimed now
    assert timer.take() == {}


def test_a_module_run_as_main_is_reached_by_name() -> None:
    timer = StepTimer([("working", "some_child:Worker.work")])
    timer.install({"some_child": sys.modules[__name__]})
    try:
        assert hasattr(Worker.work, "__wrapped__")
    finally:
        timer.uninstall()


def test_a_target_must_name_a_method() -> None:
    with pytest.raises(ValueError, match=r"Class\.method"):
        StepTimer([("bad", f"{__name__}:work")]).install()
    with pytest.raises(ValueError, match="no such method"):
        StepTimer([("bad", f"{__name__}:Worker.missing")]).install()


def test_every_step_of_the_bot_and_the_bare_script_exists() -> None:
    # The bot's and the bare script's code move; a renamed method must not make
    # ``--steps`` fail only once a benchmark is under way.
    for steps in (STEPS, BASELINE_STEPS):
        timer = StepTimer(steps)
        timer.install()
        timer.uninstall()
    bot_labels = {label for label, _ in STEPS}
    assert {label for label, _ in BASELINE_STEPS} <= bot_labels


def test_the_table_gives_medians_and_the_bare_scripts_beside() -> None:
    steps = [("ack", "m:C.a"), ("upload", "m:C.b"), ("never", "m:C.c")]
    table = steps_table(
        {"ack": [0.001, 0.003, 0.002], "upload": [0.010] * 9 + [0.050]},
        {"upload": [0.007, 0.009]},
        steps,
    )
    # The 90th percentile is the nearest rank, as every figure of the table's:
    # the 9th of 10 values, not the largest.
    assert table.splitlines()[2:] == [
        "| ack | 2.00 | 3.00 | 3 | – |",
        "| upload | 10.00 | 10.00 | 10 | 8.00 |",
        "| never | – | – | 0 | – |",
    ]
