"""The dashboard's non-plot views: KPI cards, breaker badges with provider health, cost and request tables.

Every view is a Panel ``Viewer`` that only reads a ``DashboardStore`` and re-renders when the store's
``version`` changes. HTML views assign their pane's text only when it changed, so an idle dashboard
sends nothing. Stable hooks for tests and custom CSS: ``[data-kpi="requests"]`` (with the raw number
in ``data-value``), and per provider ``.llmkit-breaker[data-provider="NAME"]`` whose ``data-state`` is
``closed``, ``open`` or ``half_open`` and whose text is ``CLOSED``, ``OPEN`` or ``HALF-OPEN``.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

import panel as pn
from bokeh.models.widgets.tables import DateFormatter, NumberFormatter
from panel.viewable import Viewer

from .plots import STATE_COLORS, STATE_LABELS, _local_ms
from .store import DashboardStore

CARD_CSS = """
:host { width: 100%; }
.llmkit-cards { display: flex; flex-wrap: wrap; gap: 10px; font-family: system-ui, -apple-system, "Segoe UI",
  Roboto, sans-serif; }
.llmkit-card { flex: 1 1 150px; background: #fff; border: 1px solid #e3e6ea; border-radius: 8px;
  padding: 10px 14px; box-shadow: 0 1px 2px rgba(0,0,0,.04); }
.llmkit-card .label { font-size: 12px; color: #5f6b7a; text-transform: uppercase; letter-spacing: .04em; }
.llmkit-card .value { font-size: 22px; white-space: nowrap; font-weight: 600; color: #1d2733; margin-top: 2px;
  font-variant-numeric: tabular-nums; }
.llmkit-card .sub { font-size: 12px; color: #5f6b7a; margin-top: 2px; }
.llmkit-bar { height: 6px; background: #edf0f3; border-radius: 3px; margin-top: 6px; overflow: hidden; }
.llmkit-bar > div { height: 100%; border-radius: 3px; }
.llmkit-provider { flex: 1 1 220px; }
.llmkit-provider .head { display: flex; align-items: center; gap: 8px; }
.llmkit-provider .name { font-size: 16px; font-weight: 600; color: #1d2733; }
.llmkit-provider .adapter { font-size: 11px; color: #5f6b7a; background: #f1f3f5; border-radius: 4px;
  padding: 1px 6px; }
.llmkit-breaker { margin-left: auto; font-size: 12px; font-weight: 700; color: #fff; border-radius: 12px;
  padding: 3px 10px; letter-spacing: .05em; }
.llmkit-provider .stats { display: grid; grid-template-columns: auto auto; gap: 2px 12px; font-size: 12px;
  color: #3c4754; margin-top: 8px; font-variant-numeric: tabular-nums; }
.llmkit-provider .stats span:nth-child(odd) { color: #5f6b7a; }
table.llmkit-costs { border-collapse: collapse; width: 100%; font-size: 12px; font-family: system-ui, sans-serif;
  font-variant-numeric: tabular-nums; }
table.llmkit-costs th { text-align: left; color: #5f6b7a; font-weight: 600; border-bottom: 1px solid #e3e6ea;
  padding: 4px 6px; }
table.llmkit-costs td { padding: 4px 6px; border-bottom: 1px solid #f1f3f5; word-break: break-word; }
table.llmkit-costs td.num, table.llmkit-costs th.num { text-align: right; white-space: nowrap; }
"""


def usd(value: float | None) -> str:
    """A dollar amount with enough digits for sub-cent LLM costs."""
    if value is None or math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"${value:,.2f}"
    if abs(value) >= 1:
        return f"${value:,.4f}"
    return f"${value:.6f}"


def ms(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "n/a"
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def ms_pair(low: float | None, high: float | None) -> str:
    """Two latencies with one unit: "120 / 450 ms"."""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "n/a"
    return f"{low * 1000:,.0f} / {high * 1000:,.0f} ms"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


class _HTMLView(Viewer):
    """An HTML pane re-rendered from the store after every refresh (sent only when the text changed)."""

    def __init__(self, store: DashboardStore, **params: Any) -> None:
        super().__init__(**params)
        self.store = store
        self.pane = pn.pane.HTML(self.render(), stylesheets=[CARD_CSS], sizing_mode="stretch_width")
        store.param.watch(lambda _: self.update(), "version")

    def render(self) -> str:
        raise NotImplementedError

    def update(self) -> None:
        text = self.render()
        if text != self.pane.object:
            self.pane.object = text

    def __panel__(self) -> Any:
        return self.pane


def _card(key: str, label: str, value: str, raw: float | int | None, sub: str = "", extra: str = "") -> str:
    data = "" if raw is None else f' data-value="{raw!r}"'
    return (f'<div class="llmkit-card" data-kpi="{key}"><div class="label">{escape(label)}</div>'
            f'<div class="value"{data}>{escape(value)}</div><div class="sub">{escape(sub)}</div>{extra}</div>')


class KPIs(_HTMLView):
    """The headline numbers: requests, errors, cost, budget, rates, latency, queue, waits."""

    def render(self) -> str:
        s = self.store
        rps, eps = s.recent_rate(10.0)
        p50, p95 = s.recent_latency()
        error_pct = 100.0 * s.errors / s.requests if s.requests else 0.0
        hit_pct = 100.0 * s.cache_hits / s.requests if s.requests else 0.0
        cards = [
            _card("requests", "Requests", f"{s.requests:,}", s.requests,
                  f"{rps:.1f}/s over the last 10 s"),
            _card("errors", "Errors", f"{s.errors:,}", s.errors, f"{error_pct:.1f}% of requests · {eps:.1f}/s"),
            _card("cost", "Total cost", usd(s.cost_usd), s.cost_usd,
                  f"{s.input_tokens:,} in / {s.output_tokens:,} out tokens"),
            self._budget(),
            _card("latency", "Latency p50 / p95", ms_pair(p50, p95), None, "recent successful requests"),
            _card("queue", "Waiting / in flight", f"{s.queue_depth} / {s.in_flight}", s.queue_depth,
                  "queued for a rate limit or slot"),
            _card("waits", "Rate-limit waits", f"{s.waits:,}", s.waits, f"{s.waited_s:,.1f} s waited in total"),
            _card("retries", "Retries / fallbacks", f"{s.retries:,} / {s.fallbacks:,}", s.retries,
                  "from the client's event log"),
            _card("cache", "Cache hits / saved", f"{hit_pct:.1f}% / {usd(s.saved_usd)}", s.cache_hits,
                  f"{s.cache_hits:,} answers from the response cache at $0"),
        ]
        return f'<div class="llmkit-cards">{"".join(cards)}</div>'

    def _budget(self) -> str:
        b = self.store.budget
        if not b:
            return _card("budget", "Spend vs budget", "no budget", None, "Client(budget_usd=...) sets one")
        pct = float(b["used_pct"])
        color = "#2e7d32" if pct < 75 else "#f9a825" if pct < 100 else "#c62828"
        bar = f'<div class="llmkit-bar"><div style="width:{min(pct, 100):.1f}%;background:{color}"></div></div>'
        return _card("budget", f"Spend vs budget ({b['period']})", f"{pct:.1f}%", pct,
                     f"{usd(b['spent_usd'])} of {usd(b['limit_usd'])}", bar)


class ProviderCards(_HTMLView):
    """One card per provider: its breaker badge, health (uptime, last check) and recent stats."""

    def render(self) -> str:
        now = self.store.clock()
        return f'<div class="llmkit-cards">{"".join(self._card(row, now) for row in self.store.health)}</div>'

    @staticmethod
    def _card(row: dict[str, Any], now: float) -> str:
        name, state = escape(str(row["provider"])), str(row["breaker_state"])
        color = STATE_COLORS.get(state, "#777")
        badge = (f'<span class="llmkit-breaker llmkit-breaker--{state}" data-provider="{name}" '
                 f'data-state="{state}" style="background:{color}">{STATE_LABELS.get(state, state.upper())}</span>')
        uptime = row.get("uptime_pct")
        last = row.get("last_check")
        check = "never" if last is None else _ago(now - last) + (" ✓" if row.get("last_check_ok") else " ✗")
        rate = row.get("error_rate")
        retry = row.get("retry_in_s")
        stats = [("health", "healthy" if row.get("healthy") else "unhealthy"),
                 ("uptime", "n/a" if uptime is None else f"{uptime:.1f}%"), ("last check", check),
                 # the health monitor counts attempts (retries included), not requests
                 ("attempts (5 min)", f"{row.get('requests', 0):,}"),
                 ("attempt errors", "n/a" if rate is None else f"{100 * rate:.1f}%"),
                 ("p50 / p95", ms_pair(row.get("latency_p50_s"), row.get("latency_p95_s")))]
        if retry is not None:
            stats.append(("probe in", f"{retry:.1f} s"))
        cells = "".join(f"<span>{escape(k)}</span><span>{escape(v)}</span>" for k, v in stats)
        return (f'<div class="llmkit-card llmkit-provider" data-provider="{name}"><div class="head">'
                f'<span class="name">{name}</span><span class="adapter">{escape(str(row.get("adapter", "")))}</span>'
                f'{badge}</div><div class="stats">{cells}</div></div>')


class CostTable(_HTMLView):
    """Cost by provider and model, costliest first."""

    def render(self) -> str:
        head = ("<tr><th>provider</th><th>model</th><th class=num>requests</th><th class=num>errors</th>"
                "<th class=num>tokens in/out</th><th class=num>cost</th></tr>")
        rows = "".join(
            f"<tr><td>{escape(r['provider'])}</td><td>{escape(r['model'])}</td>"
            f"<td class=num>{r['requests']:,}</td><td class=num>{r['errors']:,}</td>"
            f"<td class=num>{r['input_tokens']:,} / {r['output_tokens']:,}</td>"
            f"<td class=num>{usd(r['cost_usd']) if r['requests'] > r['unpriced'] else 'unpriced'}</td></tr>"
            for r in self.store.cost_table()[:20])
        return f'<table class="llmkit-costs">{head}{rows}</table>'


def _eta(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:,.0f} s"


class RunningBatches(_HTMLView):
    """The batches (``client.map``) running now: done of total, failed, spend and time left."""

    def render(self) -> str:
        batches = self.store.batches
        if not batches:
            return '<div class="llmkit-batches" data-running="0">no batch running</div>'
        head = ("<tr><th>batch</th><th class=num>done</th><th class=num>failed</th><th class=num>cached</th>"
                "<th class=num>spend</th><th class=num>rows/s</th><th class=num>ETA</th></tr>")
        rows = "".join(
            f'<tr data-batch="{escape(b["batch_id"])}"><td>{escape(b["batch_id"])}</td>'
            f'<td class=num>{b["done"]:,} / {b["total"]:,}</td><td class=num>{b["failed"]:,}</td>'
            f'<td class=num>{b["cached"]:,}</td><td class=num>{usd(b["cost_usd"])}</td>'
            f'<td class=num>{b["rate"]:,.1f}</td>'
            f'<td class=num>{_eta(b["eta_s"])}</td></tr>'
            for b in batches)
        return (f'<div class="llmkit-batches" data-running="{len(batches)}">'
                f'<table class="llmkit-costs">{head}{rows}</table></div>')


class RecentRequests(Viewer):
    """The newest requests in a Tabulator, newest first; new rows are streamed in."""

    def __init__(self, store: DashboardStore, height: int = 330, **params: Any) -> None:
        super().__init__(**params)
        self.store = store
        self.columns = ["time", "provider", "model", "status", "error", "latency_ms", "cost_usd", "input_tokens",
                        "output_tokens", "attempts", "fallback", "stream", "priority", "message"]
        if store.show_prompts:
            self.columns.append("prompt")
        rows, self.cursor, _ = store.recent.since(0)
        self.table = pn.widgets.Tabulator(
            self._frame(rows), show_index=False, disabled=True, height=height, sizing_mode="stretch_width",
            layout="fit_data_table", sorters=[{"field": "time", "dir": "desc"}], selectable=False,
            formatters={"time": DateFormatter(format="%H:%M:%S"),
                        "latency_ms": NumberFormatter(format="0,0"),
                        "cost_usd": NumberFormatter(format="$0.000000")},
            titles={"latency_ms": "latency ms", "cost_usd": "cost", "input_tokens": "in", "output_tokens": "out"},
        )
        store.param.watch(lambda _: self.update(), "version")

    def _frame(self, rows: list[dict[str, Any]]) -> Any:
        import pandas as pd

        frame = pd.DataFrame([{k: r.get(k) for k in self.columns} for r in rows], columns=self.columns)
        frame["time"] = pd.to_datetime([_local_ms(r["time"]) for r in rows], unit="ms")
        return frame

    def update(self) -> None:
        rows, self.cursor, missed = self.store.recent.since(self.cursor)
        if missed:
            self.table.value = self._frame(list(self.store.recent))
        elif rows:
            self.table.stream(self._frame(rows), rollover=self.store.max_recent, follow=False)

    def __panel__(self) -> Any:
        return self.table
