"""Fresh Discord CDN links for images the bot hands to a provider again.

Discord signs attachment links for about a day (``ex=`` in the URL, hex Unix
seconds). A re-roll of /edit or /blend, or V1-V4 and Edit on an older result,
would hand ModelsLab (which takes references by URL only) a dead link, so links
near their end are signed again through Discord's attachment refresh endpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import discord
import yarl

log = logging.getLogger("bot.cdn")

# A provider may fetch a reference only after the job waited in its queue; a link
# with less than this left is refreshed rather than trusted.
FRESH_FOR = 3600.0
REFRESH_BATCH = 50  # Discord's most URLs per refresh request


def expires_at(url: str) -> float | None:
    """When a Discord-signed link expires; None for a link Discord did not sign."""
    query = yarl.URL(url).query
    if "ex" not in query or "hm" not in query:
        return None
    try:
        return float(int(query["ex"], 16))
    except ValueError:
        return None


async def fresh_urls(client: discord.Client, urls: Iterable[str | None]) -> dict[str, str]:
    """Each Discord-signed link near or past its end, mapped to a newly signed one.

    Links that are fine, not Discord's, or that Discord would not sign again are
    left out; a failed refresh is logged and the old links are used as they are.
    """
    deadline = time.time() + FRESH_FOR
    stale = sorted(
        {u for u in urls if u is not None and (ex := expires_at(u)) is not None and ex < deadline}
    )
    fresh: dict[str, str] = {}
    route = discord.http.Route("POST", "/attachments/refresh-urls")
    for start in range(0, len(stale), REFRESH_BATCH):
        batch = stale[start : start + REFRESH_BATCH]
        try:
            answer: Any = await client.http.request(route, json={"attachment_urls": batch})
        except discord.HTTPException as exc:
            log.warning("could not refresh %d attachment link(s): HTTP %s", len(batch), exc.status)
            continue
        for item in answer.get("refreshed_urls", []) if isinstance(answer, dict) else []:
            original, refreshed = item.get("original"), item.get("refreshed")
            if isinstance(original, str) and isinstance(refreshed, str):
                fresh[original] = refreshed
    return fresh
