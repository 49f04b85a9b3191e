"""Messages written for Discord, made readable in a terminal.

The pipeline's messages are written for members and may carry Discord markup:
timestamps (``<t:1764355200:R>``, shown by Discord in each reader's time zone),
**bold**, `code` and mentions. The shell shows none of that, so the CLI passes
every such message through ``plain_text`` first.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_TIMESTAMP = re.compile(r"<t:(-?\d+)(?::([tTdDfFR]))?>")
_MENTION = re.compile(r"<(@[!&]?|#)(\d+)>")
_EMPHASIS = re.compile(r"(\*\*|__|\*|`)(.+?)\1")


def _time(match: re.Match[str]) -> str:
    when = datetime.fromtimestamp(int(match.group(1)), UTC)
    style = match.group(2) or "f"
    if style in "dD":
        return when.strftime("%Y-%m-%d")
    if style == "R":
        return when.strftime("at %Y-%m-%d %H:%M UTC")
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _mention(match: re.Match[str]) -> str:
    kind = {"@": "user", "@!": "user", "@&": "role", "#": "channel"}[match.group(1)]
    return f"{kind} {match.group(2)}"


# Advice that only makes sense on Discord, and what to do at the shell instead.
# (tests/integration/test_cli_generate.py meets each, and fails on any "Discord".)
SHELL_WORDING = {
    "Attach the image on Discord, give an https:// URL, or choose Nano Banana Pro, "
    "which takes uploads.": "Give --image as an https:// URL, or use --provider nanobanana, "
    "which takes a local file.",
    "Attach the images on Discord, or use just this one.": "Give each --image as an "
    "https:// URL, or give just one local file.",
    "attach the image again.": "give --image again.",
}


def plain_text(message: str) -> str:
    """``message`` without Discord markup or Discord-only advice, on one line."""
    text = " ".join(message.split())
    for discord_advice, shell_advice in SHELL_WORDING.items():
        text = text.replace(discord_advice, shell_advice)
    text = _TIMESTAMP.sub(_time, text)
    text = _MENTION.sub(_mention, text)
    text = _EMPHASIS.sub(lambda m: m.group(2), text)
    return " ".join(text.split())
