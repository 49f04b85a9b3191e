"""Usage charts as PNG for ``/quota usage``, drawn with matplotlib.

Blocking (about 50-100 ms a chart): run them in a thread. Only the
object-oriented API is used (``Figure`` with an Agg canvas, never pyplot), so
no global figure state is shared between threads and no GUI backend is loaded.

Discord shows an attachment at about 550 px wide in the chat; the figures are
laid out for that width in points and rendered at twice the density, so text
stays about 11-12 px high in the preview and sharp when opened. DejaVu Sans,
which ships with matplotlib, covers accented Latin, Greek, Cyrillic and most
symbols; glyphs it lacks fall back per character to the fonts listed after it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any, cast

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, DayLocator, date2num
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

WIDTH_INCHES = 5.5  # 550 px at 100 dpi: Discord's preview width
DPI = 200
BAR_COLOUR = "#5865F2"  # Discord blurple
TEXT_COLOUR = "#23272A"
MAX_LABEL = 24
FONTS = ["DejaVu Sans", "Noto Sans", "Noto Sans CJK JP", "Noto Color Emoji", "sans-serif"]
RC: dict[str, Any] = {
    "font.family": "sans-serif",
    "font.sans-serif": FONTS,
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.labelsize": 11,
    "text.color": TEXT_COLOUR,
    "axes.labelcolor": TEXT_COLOUR,
    "xtick.color": TEXT_COLOUR,
    "ytick.color": TEXT_COLOUR,
    "axes.spines.top": False,
    "axes.spines.right": False,
}

# Set once at import, not per chart: rc_context would change the process-wide
# parameters while another thread draws. This process draws nothing else.
cast("dict[str, Any]", matplotlib.rcParams).update(RC)  # its stubs want literal keys
# A name in a script no installed font covers is drawn with boxes; that is no
# reason for a warning on every chart.
warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)


def shorten(label: str, limit: int = MAX_LABEL) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def ranking_figure(title: str, rows: Sequence[tuple[str, int]], unit: str = "credits") -> Figure:
    """Horizontal bars, largest first from the top, each labelled with its value."""
    height = 1.4 + 0.36 * max(len(rows), 1)
    figure, axes = _figure(height)
    axes.set_title(title, loc="left", fontweight="bold")
    if not rows:
        _empty(axes)
        return figure
    labels = [shorten(label) for label, _ in rows]
    values = [value for _, value in rows]
    positions = range(len(rows))
    bars = axes.barh(positions, values, color=BAR_COLOUR, height=0.65)
    axes.set_yticks(positions, labels)
    axes.invert_yaxis()  # the first row (the largest) on top
    axes.bar_label(bars, padding=3, fontsize=10)
    axes.set_xlabel(unit)
    axes.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    axes.set_xlim(0, max(max(values), 1) * 1.15)  # room for the value labels
    axes.tick_params(axis="y", length=0)
    axes.grid(axis="x", alpha=0.3)
    axes.set_axisbelow(True)
    return figure


def daily_figure(title: str, days: Sequence[tuple[date, int]], unit: str = "credits") -> Figure:
    """Bars on a date axis in calendar order; days without usage stay empty."""
    figure, axes = _figure(3.2)
    axes.set_title(title, loc="left", fontweight="bold")
    if not days:
        _empty(axes)
        return figure
    ordered = sorted(days)
    first, last = ordered[0][0], ordered[-1][0]
    axes.bar(
        [date2num(day) for day, _ in ordered],
        [value for _, value in ordered],
        width=0.8 if last > first else 0.5,
        color=BAR_COLOUR,
    )
    # Up to a week every day gets a tick; beyond, matplotlib picks days, weeks
    # or months. Never hours: a bar is a whole day.
    locator = DayLocator() if (last - first).days <= 7 else AutoDateLocator(minticks=3, maxticks=7)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    # A day's margin either side: a single day still gets a readable axis.
    axes.set_xlim(date2num(first - timedelta(days=1)), date2num(last + timedelta(days=1)))
    axes.set_ylabel(unit)
    axes.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    return figure


def to_png(figure: Figure) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI, facecolor="white")
    return out.getvalue()


def ranking_png(title: str, rows: Sequence[tuple[str, int]], unit: str = "credits") -> bytes:
    return to_png(ranking_figure(title, rows, unit))


def daily_png(title: str, days: Sequence[tuple[date, int]], unit: str = "credits") -> bytes:
    return to_png(daily_figure(title, days, unit))


def _figure(height: float) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(WIDTH_INCHES, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _empty(axes: Axes) -> None:
    axes.set_axis_off()
    axes.text(0.5, 0.5, "No usage in this period.", ha="center", va="center", fontsize=12)
