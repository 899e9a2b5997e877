"""Lay out a daily usage series as an SVG bar chart: pure geometry, no I/O, no chart library.

The template `partials/usage_chart.html` draws what `layout_chart` computes: one stacked
bar per day (input below, output on top), a few round-number gridlines and date labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from babel.dates import format_skeleton

from gateway.reports.dashboard import DayUsage
from web.i18n import _, current_language

WIDTH = 720
HEIGHT = 240
LEFT = 56     # room for the y-axis labels
RIGHT = 8
TOP = 12
BOTTOM = 28   # room for the date labels


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    input_y: float
    input_height: float
    output_y: float
    output_height: float
    label: str          # tooltip: the day and its figures
    day: DayUsage


@dataclass(frozen=True, slots=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    plot_left: float
    plot_right: float
    plot_top: float
    plot_bottom: float
    bars: tuple[Bar, ...]
    gridlines: tuple[Tick, ...]
    dates: tuple[Tick, ...]
    total_tokens: int
    total_requests: int
    summary: str        # the chart in one sentence, for screen readers


def compact(n: float) -> str:
    """12345 -> 12.3k, 2000000 -> 2M."""
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            text = f"{n / limit:.1f}".rstrip("0").rstrip(".")
            return text + suffix
    return str(int(n))


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is >= value (1 for 0)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return float(step * power)
    raise AssertionError("unreachable: 10 * power >= value")


def layout_chart(series: Sequence[DayUsage], width: int = WIDTH,
                 height: int = HEIGHT) -> Chart:
    plot_left, plot_right = float(LEFT), float(width - RIGHT)
    plot_top, plot_bottom = float(TOP), float(height - BOTTOM)
    plot_height = plot_bottom - plot_top
    top_value = nice_ceiling(max((d.tokens for d in series), default=0))
    slot = (plot_right - plot_left) / max(1, len(series))
    bar_width = max(1.0, slot * 0.7)

    def scale(v: int) -> float:
        return plot_height * v / top_value

    bars = []
    for i, day in enumerate(series):
        x = plot_left + i * slot + (slot - bar_width) / 2
        input_h, output_h = scale(day.input_tokens), scale(day.output_tokens)
        label = (f"{day.day.isoformat()}: {day.tokens:,} tokens "
                 f"({day.input_tokens:,} in, {day.output_tokens:,} out), "
                 f"{day.requests:,} request{'s' if day.requests != 1 else ''}")
        bars.append(Bar(x=round(x, 2), width=round(bar_width, 2),
                        input_y=round(plot_bottom - input_h, 2), input_height=round(input_h, 2),
                        output_y=round(plot_bottom - input_h - output_h, 2),
                        output_height=round(output_h, 2), label=label, day=day))
    gridlines = tuple(Tick(round(plot_bottom - plot_height * f, 2), compact(top_value * f))
                      for f in (0, 0.25, 0.5, 0.75, 1))
    every = max(1, math.ceil(len(series) / 6))
    locale = "zh_CN" if current_language() == "zh-CN" else "en_US"
    dates = tuple(Tick(round(plot_left + i * slot + slot / 2, 2),
                       format_skeleton("MMMd", day.day, locale=locale))
                  for i, day in enumerate(series) if (len(series) - 1 - i) % every == 0)
    total_tokens = sum(d.tokens for d in series)
    total_requests = sum(d.requests for d in series)
    busiest = max(series, key=lambda d: d.tokens, default=None)
    total = f"{total_tokens:,}"
    if busiest is not None and busiest.tokens:
        most = f"{busiest.tokens:,}"
        summary = _("Tokens per day over the last %(days)d days: %(total)s in total, most on "
                    "%(day)s (%(most)s).", days=len(series), total=total,
                    day=busiest.day.isoformat(), most=most)
    else:
        summary = _("Tokens per day over the last %(days)d days: %(total)s in total.",
                    days=len(series), total=total)
    return Chart(width=width, height=height, plot_left=plot_left, plot_right=plot_right,
                 plot_top=plot_top, plot_bottom=plot_bottom, bars=tuple(bars),
                 gridlines=gridlines, dates=dates, total_tokens=total_tokens,
                 total_requests=total_requests, summary=summary)
