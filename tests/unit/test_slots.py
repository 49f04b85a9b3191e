import asyncio

from bot.jobs import ProviderSlots


async def test_slots_limit_calls_in_flight_and_serve_fifo():
    slots = ProviderSlots(2)
    running = 0
    peak = 0
    order: list[int] = []
    positions: dict[int, list[int]] = {}

    async def job(n: int) -> None:
        nonlocal running, peak

        async def on_position(position: int) -> None:
            positions.setdefault(n, []).append(position)

        async with slots.slot(on_position):
            order.append(n)
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1

    await asyncio.gather(*(job(n) for n in range(8)))
    await asyncio.sleep(0)
    assert peak == 2
    assert order == list(range(8))
    # The last one to queue started at position 6 and moved forward to 1.
    assert positions[7][0] == 6
    assert positions[7][-1] == 1


async def test_cancelled_waiter_leaves_the_queue_and_frees_nothing_twice():
    slots = ProviderSlots(1)
    release = asyncio.Event()
    inside = 0
    peak = 0

    async def holder(gate: asyncio.Event) -> None:
        nonlocal inside, peak
        async with slots.slot():
            inside += 1
            peak = max(peak, inside)
            await gate.wait()
            inside -= 1

    first = asyncio.create_task(holder(release))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(holder(release))
    await asyncio.sleep(0)
    assert slots.waiting == 1
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert slots.waiting == 0
    release.set()
    await first
    # Exactly one slot is free again: two holders in a row must not overlap.
    later = asyncio.Event()
    third = asyncio.create_task(holder(later))
    fourth = asyncio.create_task(holder(later))
    for _ in range(100):  # until both have either got a slot or queued for one
        if inside + slots.waiting == 2:
            break
        await asyncio.sleep(0)
    assert (inside, slots.waiting) == (1, 1)
    later.set()
    await asyncio.gather(third, fourth)
    assert peak == 1


async def test_a_waiter_cancelled_inside_its_position_callback_frees_its_place():
    """The position callback is a Discord edit; SIGTERM or a cancel button can
    cancel the job while it runs. Every slot must still come back."""
    slots = ProviderSlots(1)
    hold = asyncio.Event()
    in_callback = asyncio.Event()
    never = asyncio.Event()

    async def holder() -> None:
        async with slots.slot():
            await hold.wait()

    async def on_position(position: int) -> None:
        in_callback.set()
        await never.wait()  # the edit hangs until the job is cancelled

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiting = asyncio.create_task(slots._acquire(on_position))
    await in_callback.wait()
    assert slots.waiting == 1
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert waiting.cancelled()
    assert slots.waiting == 0
    hold.set()
    await first

    # Both slots' worth of later jobs run: nothing was handed to the dead waiter.
    async def quick() -> None:
        async with slots.slot():
            await asyncio.sleep(0)

    await asyncio.wait_for(asyncio.gather(quick(), quick(), quick()), timeout=5)
    assert slots._free == 1
