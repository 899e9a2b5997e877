"""The SVG chart's geometry: scale, stacking, gridlines and labels, with no I/O."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from gateway.reports.dashboard import DayUsage
from web.usage_chart import compact, layout_chart, nice_ceiling


def series(values: list[tuple[int, int]]) -> list[DayUsage]:
    start = date(2025, 11, 1)
    return [DayUsage(start + timedelta(days=i), requests=1 if i_ or o else 0,
                     input_tokens=i_, output_tokens=o) for i, (i_, o) in enumerate(values)]


@pytest.mark.parametrize(("value", "ceiling"), [
    (0, 1.0), (1, 1.0), (7, 10.0), (12, 20.0), (21, 25.0), (26, 50.0), (99_000, 100_000.0),
    (150_000, 200_000.0)])
def test_axis_top_is_a_round_number(value: float, ceiling: float) -> None:
    assert nice_ceiling(value) == ceiling


def test_compact_numbers() -> None:
    assert [compact(n) for n in (0, 999, 1000, 12_345, 2_000_000, 2_500_000_000)] == [
        "0", "999", "1k", "12.3k", "2M", "2.5B"]


def test_bars_stack_output_on_input_and_scale_to_the_busiest_day() -> None:
    chart = layout_chart(series([(0, 0), (600, 400), (300, 200)]))
    empty, busiest, half = chart.bars
    assert empty.input_height == 0 and empty.output_height == 0
    plot = chart.plot_bottom - chart.plot_top
    assert busiest.input_height + busiest.output_height == pytest.approx(plot)
    assert busiest.output_y + busiest.output_height == pytest.approx(busiest.input_y)
    assert half.input_height + half.output_height == pytest.approx(plot / 2)
    assert [t.label for t in chart.gridlines] == ["0", "250", "500", "750", "1k"]
    assert chart.total_tokens == 1500 and chart.total_requests == 2
    assert "most on 2025-11-02 (1,000)" in chart.summary


def test_thirty_days_get_a_few_date_labels_ending_today() -> None:
    chart = layout_chart(series([(10, 5)] * 30))
    assert len(chart.bars) == 30 and 4 <= len(chart.dates) <= 7
    assert chart.dates[-1].label == "Nov 30"
    assert all(chart.plot_left <= b.x and b.x + b.width <= chart.plot_right
               for b in chart.bars)


def test_all_zero_series_draws_flat_bars() -> None:
    chart = layout_chart(series([(0, 0)] * 7))
    assert all(b.input_height == 0 == b.output_height for b in chart.bars)
    assert chart.summary.startswith("Tokens per day over the last 7 days: 0 in total")
