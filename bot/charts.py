"""A horizontal bar chart as PNG, for usage reports. Blocking: run it in a thread."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

WIDTH = 800
ROW = 28
MARGIN = 16
LABEL_WIDTH = 220
BAR_COLOUR = (88, 101, 242)
TEXT_COLOUR = (32, 34, 37)


def bar_chart_png(title: str, rows: Sequence[tuple[str, int]]) -> bytes:
    font = ImageFont.load_default()
    height = MARGIN * 3 + ROW * max(len(rows), 1) + ROW
    image = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, MARGIN), title, fill=TEXT_COLOUR, font=font)
    top = MARGIN * 2 + ROW
    peak = max((value for _, value in rows), default=0) or 1
    bar_space = WIDTH - LABEL_WIDTH - MARGIN * 3 - 60
    for index, (label, value) in enumerate(rows):
        y = top + index * ROW
        draw.text((MARGIN, y + 6), label[:32], fill=TEXT_COLOUR, font=font)
        length = round(bar_space * value / peak)
        x0 = LABEL_WIDTH + MARGIN
        draw.rectangle((x0, y + 4, x0 + max(length, 1), y + ROW - 4), fill=BAR_COLOUR)
        draw.text((x0 + length + 8, y + 6), str(value), fill=TEXT_COLOUR, font=font)
    if not rows:
        draw.text((MARGIN, top + 6), "No usage in this period.", fill=TEXT_COLOUR, font=font)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
