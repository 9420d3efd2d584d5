"""Bokeh plots of the store's time series, as Panel ``Viewer``s that only read the store.

Each plot owns one ``ColumnDataSource`` per series and a cursor into the store's rolling buffer; on
every store refresh it streams just the new points (``ColumnDataSource.stream`` with a rollover), so
a browser receives a few numbers per tick, never the whole history again. Times are shown in the
machine's local time zone.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import panel as pn
from bokeh.models import ColumnDataSource, DataRange1d, FactorRange, HoverTool, NumeralTickFormatter
from bokeh.models.annotations import Title
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from panel.viewable import Viewer

from .store import DashboardStore, Rolling

Columns = dict[str, Any]  # a ColumnDataSource's data
STATE_COLORS = {"closed": "#2e7d32", "half_open": "#f9a825", "open": "#c62828"}
STATE_LABELS = {"closed": "CLOSED", "half_open": "HALF-OPEN", "open": "OPEN"}


def provider_colors(providers: list[str]) -> dict[str, str]:
    return {name: Category10_10[i % 10] for i, name in enumerate(providers)}


def _local_ms(t: float) -> float:
    """Epoch seconds as the milliseconds a datetime axis shows as local wall time."""
    offset = datetime.fromtimestamp(t).astimezone().utcoffset()
    return (t + (offset.total_seconds() if offset else 0.0)) * 1000.0


def _figure(title: str, height: int = 250, y_label: str | None = None, x_range: Any = None,
            y_start: float | None = None, **kwargs: Any) -> Any:
    if x_range is not None:
        kwargs["x_range"] = x_range
    if y_start is not None:
        kwargs["y_range"] = DataRange1d(start=y_start, min_interval=1e-6)  # counts and costs start at 0
    fig = figure(title=title, height=height, sizing_mode="stretch_width", x_axis_type="datetime",
                 tools="pan,xwheel_zoom,box_zoom,reset,save", toolbar_location="above", **kwargs)
    fig.toolbar.logo = None
    if isinstance(fig.title, Title):
        fig.title.text_font_size = "13px"
    fig.xaxis.axis_label = "local time"
    if y_label:
        fig.yaxis.axis_label = y_label
    fig.grid.grid_line_alpha = 0.35
    fig.min_border_left = 50
    return fig


def _style_legend(fig: Any) -> None:
    """Legends in the top left, small, and clickable to hide a series."""
    fig.legend.location = "top_left"
    fig.legend.click_policy = "hide"
    fig.legend.label_text_font_size = "11px"


class _Plot(Viewer):
    """A bokeh figure fed from one of the store's rolling buffers."""

    def __init__(self, store: DashboardStore, x_range: Any = None, **params: Any) -> None:
        super().__init__(**params)
        self.store = store
        self.x_range = x_range  # share one range across plots: panning or zooming one moves them all
        self.colors = provider_colors(store.providers)
        self.source = ColumnDataSource(self._columns([]))
        self.cursor = 0
        self.figure = self._make_figure()
        self.pane = pn.pane.Bokeh(self.figure, sizing_mode="stretch_width")
        self.update()
        store.param.watch(lambda _: self.update(), "version")

    def _buffer(self) -> Rolling[dict[str, float]]:
        return self.store.timeline

    def _columns(self, rows: list[dict[str, float]]) -> Columns:
        raise NotImplementedError

    def _make_figure(self) -> Any:
        raise NotImplementedError

    def update(self) -> None:
        rows, self.cursor, missed = self._buffer().since(self.cursor)
        if missed:  # fell behind the rolling buffer (a stalled session): start over from what it holds
            self.source.data = self._columns(rows)
        elif rows:
            self.source.stream(self._columns(rows), rollover=self.store.max_points)

    def __panel__(self) -> Any:
        return self.pane


class CostPlot(_Plot):
    """Cumulative cost by provider over time."""

    def _columns(self, rows: list[dict[str, float]]) -> Columns:
        data: Columns = {"time": [_local_ms(r["time"]) for r in rows]}
        for i, name in enumerate(self.store.providers):
            data[f"c{i}"] = [r[f"cost|{name}"] for r in rows]
        return data

    def _make_figure(self) -> Any:
        fig = _figure("Cumulative cost by provider (USD)", y_label="USD", x_range=self.x_range, y_start=0.0)
        fig.yaxis.formatter = NumeralTickFormatter(format="$0.[0000]")
        for i, name in enumerate(self.store.providers):
            fig.line("time", f"c{i}", source=self.source, color=self.colors[name], line_width=2, legend_label=name)
        fig.add_tools(HoverTool(tooltips=[("time", "@time{%H:%M:%S}"), *[
            (name, f"@c{i}{{$0.000000}}") for i, name in enumerate(self.store.providers)]],
            formatters={"@time": "datetime"}, mode="vline"))
        _style_legend(fig)
        return fig


class LatencyPlot(_Plot):
    """p50 (solid) and p95 (dashed) latency of successful requests, per provider and time bucket."""

    def _columns(self, rows: list[dict[str, float]]) -> Columns:
        data: Columns = {"time": [_local_ms(r["time"]) for r in rows]}
        for i, name in enumerate(self.store.providers):
            data[f"p50_{i}"] = [r[f"p50|{name}"] * 1000.0 for r in rows]
            data[f"p95_{i}"] = [r[f"p95|{name}"] * 1000.0 for r in rows]
        return data

    def _make_figure(self) -> Any:
        fig = _figure(f"Latency p50 (solid) / p95 (dashed) per {self.store.bucket_s:g} s", y_label="ms",
                      x_range=self.x_range, y_start=0.0)
        for i, name in enumerate(self.store.providers):
            color = self.colors[name]
            fig.line("time", f"p50_{i}", source=self.source, color=color, line_width=2, legend_label=name)
            fig.scatter("time", f"p50_{i}", source=self.source, color=color, size=3)
            fig.line("time", f"p95_{i}", source=self.source, color=color, line_width=1.5, line_dash="dashed",
                     alpha=0.8)
        _style_legend(fig)
        return fig


class TrafficPlot(_Plot):
    """Requests, errors and rate-limit waits per second (all providers)."""

    def _columns(self, rows: list[dict[str, float]]) -> Columns:
        w = self.store.bucket_s
        return {"time": [_local_ms(r["time"]) for r in rows], "rps": [r["rps"] for r in rows],
                "eps": [r["eps"] for r in rows], "wps": [r["waits"] / w for r in rows],
                "retries": [r["retries"] / w for r in rows]}

    def _make_figure(self) -> Any:
        fig = _figure("Requests, errors and waits per second", y_label="per second", x_range=self.x_range, y_start=0.0)
        fig.varea("time", y1=0, y2="rps", source=self.source, color="#1f77b4", alpha=0.15)
        fig.line("time", "rps", source=self.source, color="#1f77b4", line_width=2, legend_label="requests/s")
        fig.line("time", "eps", source=self.source, color="#c62828", line_width=2, legend_label="errors/s")
        fig.line("time", "retries", source=self.source, color="#9467bd", line_width=1.5, legend_label="retries/s")
        fig.line("time", "wps", source=self.source, color="#ff7f0e", line_width=1.5, line_dash="dashed",
                 legend_label="rate-limit waits/s")
        _style_legend(fig)
        return fig


class QueuePlot(_Plot):
    """Requests waiting (queue depth) and in flight, sampled at every refresh."""

    def _buffer(self) -> Rolling[dict[str, float]]:
        return self.store.samples

    def _columns(self, rows: list[dict[str, float]]) -> Columns:
        return {"time": [_local_ms(r["time"]) for r in rows], "queue": [r["queue_depth"] for r in rows],
                "flight": [r["in_flight"] for r in rows]}

    def _make_figure(self) -> Any:
        fig = _figure("Queue depth and requests in flight", y_label="requests", x_range=self.x_range, y_start=0.0)
        fig.step("time", "flight", source=self.source, color="#1f77b4", line_width=2, legend_label="in flight",
                 mode="after")
        fig.step("time", "queue", source=self.source, color="#ff7f0e", line_width=2,
                 legend_label="waiting (rate limit / slot)", mode="after")
        fig.legend.location = "top_left"
        fig.legend.label_text_font_size = "11px"
        return fig


class BreakerTimeline(Viewer):
    """One strip per provider, colored by breaker state over time.

    Finished segments are only ever streamed (append-only, so a late or reordered message cannot
    corrupt them); the current segment of each provider lives in a second, tiny source (one row per
    provider) that is replaced every tick, which also makes the strips grow up to "now".
    """

    def __init__(self, store: DashboardStore, max_rows: int = 2000, x_range: Any = None, **params: Any) -> None:
        super().__init__(**params)
        self.store = store
        self.max_rows = max_rows
        self.closed = ColumnDataSource(self._columns([]))
        self.current = ColumnDataSource(self._columns([]))
        self.cursor = 0
        height = 170 + 30 * max(1, len(store.providers))
        fig = _figure("Circuit breakers", height=height, x_range=x_range,
                      y_range=FactorRange(factors=list(reversed(store.providers))))
        for source in (self.closed, self.current):
            fig.hbar(y="provider", left="start", right="end", height=0.7, color="color", source=source,
                     line_color="white", line_width=0.5)
        # legend entries: three rows that draw nothing (NaN extent), one per state
        legend = ColumnDataSource({"provider": [store.providers[0]] * 3 if store.providers else [""] * 3,
                                   "start": [math.nan] * 3, "end": [math.nan] * 3,
                                   "color": list(STATE_COLORS.values()), "label": list(STATE_LABELS.values())})
        fig.hbar(y="provider", left="start", right="end", height=0.7, color="color", source=legend,
                 legend_field="label")
        fig.add_tools(HoverTool(tooltips=[("provider", "@provider"), ("state", "@label"),
                                          ("from", "@start{%H:%M:%S}"), ("to", "@end{%H:%M:%S}")],
                                formatters={"@start": "datetime", "@end": "datetime"}))
        fig.legend.location = "top_left"
        fig.legend.orientation = "horizontal"
        fig.legend.label_text_font_size = "11px"
        fig.add_layout(fig.legend[0], "above")
        fig.ygrid.grid_line_color = None
        self.figure = fig
        self.pane = pn.pane.Bokeh(fig, sizing_mode="stretch_width")
        self._rebuild()
        store.param.watch(lambda _: self.update(), "version")

    @staticmethod
    def _columns(segments: list[dict[str, Any]]) -> Columns:
        return {"provider": [s["provider"] for s in segments],
                "start": [_local_ms(s["start"]) for s in segments],
                "end": [_local_ms(s["end"]) for s in segments],
                "color": [STATE_COLORS.get(s["state"], "#777") for s in segments],
                "label": [STATE_LABELS.get(s["state"], s["state"]) for s in segments]}

    def _rebuild(self) -> None:
        segments = self.store.breaker_segments()
        self.cursor = self.store.transitions.total
        last = {s["provider"]: i for i, s in enumerate(segments)}  # each provider's current segment
        self.closed.data = self._columns([s for i, s in enumerate(segments) if i not in last.values()])
        self._now = {s["provider"]: dict(s) for i, s in enumerate(segments) if i in last.values()}
        self.current.data = self._columns(list(self._now.values()))

    def update(self) -> None:
        new, cursor, missed = self.store.transitions.since(self.cursor)
        if missed or len(self.closed.data["start"]) + len(new) > self.max_rows:
            self._rebuild()
            return
        self.cursor = cursor
        now = self.store.clock()
        finished = []
        for tr in new:
            seg = self._now.get(tr.provider)
            if seg is not None:
                finished.append({**seg, "end": tr.time})
            self._now[tr.provider] = {"provider": tr.provider, "state": tr.new, "start": tr.time, "end": now}
        if finished:
            self.closed.stream(self._columns(finished))
        for seg in self._now.values():
            seg["end"] = max(now, seg["start"])
        self.current.data = self._columns(list(self._now.values()))

    def __panel__(self) -> Any:
        return self.pane


def finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value)
