"""A brief stage's progress line (fetching, uploading) is sent only if its stage
outlasts a grace; the answer that ends the stage never waits on a line that was
not sent."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from bot.app import ImageBot
from cogs._delivery import DiscordDelivery


async def test_a_line_still_in_its_grace_is_dropped_without_holding_up_the_answer() -> None:
    # No interaction: nothing here may reach Discord, and the line is never sent.
    delivery = DiscordDelivery(cast(ImageBot, object()), None, channel_id=1)
    delivery._show_later("Uploading your images…")
    line = delivery._brief
    assert line is not None and not line.done()
    settling = delivery._settle_brief()
    # Settled within its first step: no turn of the event loop, where other
    # members' work would run first, between the upload's start and this job.
    with pytest.raises(StopIteration):
        settling.send(None)
    await asyncio.wait({line})
    assert line.cancelled()
