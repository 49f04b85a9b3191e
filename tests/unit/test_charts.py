"""Usage charts: what they say (names, order, axes), not their pixels."""

from __future__ import annotations

import io
from datetime import date, timedelta

from matplotlib.dates import num2date
from matplotlib.font_manager import FontProperties, findfont
from matplotlib.ft2font import FT2Font
from matplotlib.patches import Rectangle
from PIL import Image

from bot.charts import daily_figure, daily_png, ranking_figure, ranking_png


def _bars(axes) -> list[Rectangle]:
    return [patch for patch in axes.patches if isinstance(patch, Rectangle)]


def test_ranking_names_members_largest_first_with_their_values():
    figure = ranking_figure("Credits by member, this day", [("Émile", 12), ("ada", 7), ("Zoë", 1)])
    axes = figure.axes[0]
    figure.canvas.draw()
    assert [t.get_text() for t in axes.get_yticklabels()] == ["Émile", "ada", "Zoë"]
    # Top to bottom: the y axis is inverted so the first row is drawn highest.
    tops = [bar.get_y() for bar in _bars(axes)]
    assert axes.yaxis_inverted() and tops == sorted(tops)
    assert [t.get_text() for t in axes.texts] == ["12", "7", "1"]
    assert axes.get_xlabel() == "credits"


def test_ranking_font_has_the_glyphs_of_accented_names():
    figure = ranking_figure("t", [("Émile Łukasz Zoë Ωmega Жанна", 3)])
    label = figure.axes[0].get_yticklabels()[0]
    font = FT2Font(findfont(FontProperties(family=label.get_fontfamily())))
    missing = [ch for ch in "Émile Łukasz Zoë Ωmega Жанна" if font.get_char_index(ord(ch)) == 0]
    assert missing == []


def test_long_names_are_shortened():
    figure = ranking_figure("t", [("x" * 80, 3)])
    (label,) = figure.axes[0].get_yticklabels()
    assert label.get_text().endswith("…") and len(label.get_text()) <= 24


def test_days_are_drawn_in_calendar_order_on_a_date_axis():
    first = date(2026, 11, 2)
    days = [(first + timedelta(days=n), credits) for n, credits in ((3, 40), (0, 5), (9, 20))]
    figure = daily_figure("Credits by day", days)
    axes = figure.axes[0]
    figure.canvas.draw()
    drawn = [
        (num2date(bar.get_x() + bar.get_width() / 2).date(), bar.get_height())
        for bar in _bars(axes)
    ]
    assert drawn == sorted(days)
    labels = [t.get_text() for t in axes.get_xticklabels() if t.get_text()]
    assert labels and all(":" not in label for label in labels)  # days, never hours
    assert axes.get_ylabel() == "credits"


def test_a_single_day_has_a_readable_axis():
    figure = daily_figure("Credits by day", [(date(2026, 11, 28), 5)])
    figure.canvas.draw()
    labels = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert "28" in labels or any("Nov" in label for label in labels)
    assert all(":" not in label for label in labels)


def test_pngs_are_sized_for_discord_previews_and_say_when_empty():
    for png in (ranking_png("t", [("ada", 3)]), daily_png("t", [(date(2026, 1, 1), 1)])):
        with Image.open(io.BytesIO(png)) as image:
            # 550 px wide at Discord's preview, drawn at twice that density.
            assert image.format == "PNG" and image.width == 1100
    empty = ranking_figure("t", [])
    assert [t.get_text() for t in empty.axes[0].texts] == ["No usage in this period."]
