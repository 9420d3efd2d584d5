"""The dashboard app: assembles the views over one store, refreshes it periodically, and serves it.

``create_app(client)`` returns a Panel layout (it renders inline in a notebook and is what each browser
session of ``serve`` gets). Every app has its own store and its own periodic callback, so sessions
never share mutable state; a new session reads the ledger once, then only what is new.

``serve(client)`` runs a Panel server on a background thread, bound to 127.0.0.1 unless told
otherwise, and returns a ``DashboardHandle`` with ``.url``, ``.port`` and ``.stop()``.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from datetime import datetime
from html import escape
from typing import TYPE_CHECKING, Any

import panel as pn
from bokeh.models import DataRange1d
from panel.io.notebook import push_notebook

from .plots import BreakerTimeline, CostPlot, LatencyPlot, QueuePlot, TrafficPlot
from .store import DashboardStore
from .views import CARD_CSS, CostTable, KPIs, ProviderCards, RecentRequests, RunningBatches

if TYPE_CHECKING:
    from llmkit import Client

__all__ = ["Dashboard", "DashboardHandle", "create_app", "serve"]

DEFAULT_TITLE = "llmkit dashboard"
HEADER_CSS = CARD_CSS + """
.llmkit-header { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap; padding: 12px 18px;
  background: #1d2733; color: #fff; border-radius: 8px; font-family: system-ui, -apple-system, sans-serif; }
.llmkit-header h1 { font-size: 20px; margin: 0; font-weight: 600; }
.llmkit-header .meta { font-size: 12px; color: #c5cdd6; }
h3.llmkit-section { font-family: system-ui, sans-serif; font-size: 14px; color: #3c4754; margin: 6px 0 0 2px;
  text-transform: uppercase; letter-spacing: .05em; }
"""


def _section(title: str) -> pn.pane.HTML:
    return pn.pane.HTML(f'<h3 class="llmkit-section">{escape(title)}</h3>', stylesheets=[HEADER_CSS],
                        sizing_mode="stretch_width", margin=(8, 10, 0, 10))


class Dashboard(pn.Column):
    """The assembled dashboard: a Panel ``Column`` that also holds its ``store`` and refresh callback."""

    def __init__(self, client: Client, refresh_s: float = 1.0, title: str = DEFAULT_TITLE,
                 store: DashboardStore | None = None, **store_options: Any) -> None:
        if refresh_s <= 0:
            raise ValueError(f"refresh_s must be positive, got {refresh_s!r}")
        store = store or DashboardStore(client, **store_options)
        store.refresh()
        started = datetime.now().astimezone().strftime("%H:%M:%S %Z")
        header = pn.pane.HTML(
            f'<div class="llmkit-header"><h1>{escape(title)}</h1><span class="meta">providers: '
            f'{escape(", ".join(store.providers))} · refresh {refresh_s:g} s · buckets {store.bucket_s:g} s'
            f' · opened {started}</span></div>', stylesheets=[HEADER_CSS], sizing_mode="stretch_width")
        wide = {"sizing_mode": "stretch_width"}
        x = DataRange1d()  # one time axis for every plot
        views: dict[str, Any] = {
            "kpis": KPIs(store), "providers": ProviderCards(store), "cost": CostPlot(store, x),
            "latency": LatencyPlot(store, x), "traffic": TrafficPlot(store, x), "queue": QueuePlot(store, x),
            "breakers": BreakerTimeline(store, x_range=x), "costs": CostTable(store), "recent": RecentRequests(store),
            "batches": RunningBatches(store),
        }
        super().__init__(
            header,
            views["kpis"],
            _section("Providers"),
            views["providers"],
            pn.Row(views["cost"], views["latency"], **wide),
            pn.Row(views["traffic"], views["queue"], **wide),
            pn.Row(views["breakers"], pn.Column(_section("Cost by provider and model"), views["costs"], width=560),
                   **wide),
            _section("Running batches (client.map)"),
            views["batches"],
            _section("Recent requests"),
            views["recent"],
            sizing_mode="stretch_width", styles={"background": "#f6f7f9"}, margin=0,
        )
        self.store = store
        self.views = views
        self.refresh_s = refresh_s
        self.callback: Any = None
        doc = pn.state.curdoc
        if doc is not None and doc.session_context is not None:
            # served: start once the browser is connected, so no streamed update is lost before it is
            pn.state.onload(self._start)
        else:
            self._start()

    def _start(self) -> None:
        if self.callback is None:
            self.callback = pn.state.add_periodic_callback(self.refresh, period=max(50, int(self.refresh_s * 1000)))

    def refresh(self) -> None:
        """Read what is new and update every view (the periodic callback calls this)."""
        with pn.io.hold():
            self.store.refresh()
        # in a notebook, changes made to Bokeh models directly (the plots' streams) travel only when
        # something pushes the document: push it now (a no-op when served)
        push_notebook(self)

    def stop(self) -> None:
        """Stop refreshing (a notebook's dashboard otherwise refreshes until the kernel stops)."""
        if self.callback is not None:
            self.callback.stop()


def create_app(client: Client, refresh_s: float = 1.0, title: str = DEFAULT_TITLE,
               **options: Any) -> pn.viewable.Viewable:
    """The live dashboard of ``client`` as a Panel object (refreshing every ``refresh_s`` seconds).

    ``options`` go to ``DashboardStore``: ``bucket_s`` (time-series resolution, default 2 s),
    ``max_points``, ``max_recent``, ``show_prompts``.
    """
    pn.extension("tabulator")
    return Dashboard(client, refresh_s=refresh_s, title=title, **options)


class DashboardHandle:
    """A dashboard served on a background thread: ``.url``, ``.port``, ``.stop()`` (also a context manager)."""

    def __init__(self, url: str, port: int, address: str, thread: Any, server_id: str) -> None:
        self.url = url
        self.port = port
        self.address = address
        self._thread = thread
        self._server_id = server_id
        self._stopped = False

    @property
    def running(self) -> bool:
        return not self._stopped and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and its sessions; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._thread.stop()
        except RuntimeError:
            pass  # already stopping
        self._thread.join(timeout)
        pn.state._servers.pop(self._server_id, None)
        pn.state._threads.pop(self._server_id, None)

    def __enter__(self) -> DashboardHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<DashboardHandle {self.url} {'running' if self.running else 'stopped'}>"


def _bindable_port(address: str, port: int) -> int:
    """``port`` (any free one for 0) if it can be bound on ``address`` as the server will bind it, else OSError."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tornado does
            sock.bind((address, port))
            return int(sock.getsockname()[1])
    except OSError as exc:
        raise OSError(exc.errno, f"cannot serve the dashboard on {address}:{port}: {exc.strerror}") from None


def serve(client: Client, port: int = 0, address: str = "127.0.0.1", show: bool = False, refresh_s: float = 1.0,
          title: str = DEFAULT_TITLE, websocket_origin: list[str] | None = None, start_timeout: float = 30.0,
          **options: Any) -> DashboardHandle:
    """Serve ``client``'s dashboard at ``http://address:port/`` from a background thread (``port=0``: any
    free port). Binds to 127.0.0.1 by default; pass ``address="0.0.0.0"`` (and ``websocket_origin``, the
    ``host:port`` your browser uses) to share it on a network."""
    port = _bindable_port(address, port)
    host = "127.0.0.1" if address in ("", "0.0.0.0") else address
    origins = websocket_origin or list(dict.fromkeys([f"{host}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"]))
    server_id = uuid.uuid4().hex

    def factory() -> pn.viewable.Viewable:
        return create_app(client, refresh_s=refresh_s, title=title, **options)

    thread = pn.serve({"/": factory}, port=port, address=address, show=show, threaded=True, start=True,
                      title=title, websocket_origin=origins, server_id=server_id)
    deadline = time.monotonic() + start_timeout
    ready = threading.Event()
    while server_id not in pn.state._servers:  # the server registers once its socket is bound
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the dashboard server did not start on {address}:{port}")
        ready.wait(0.01)
    return DashboardHandle(f"http://{host}:{port}/", port, address, thread, server_id)
