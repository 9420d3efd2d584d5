"""The app without a browser: views stream only what is new, serve() starts and stops, the CLI, the demo."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llmkit
from llmkit.cli import build_parser, main

pn = pytest.importorskip("panel")
from bokeh.models import ColumnDataSource  # noqa: E402

from llmkit.dashboard.app import Dashboard, create_app, serve  # noqa: E402

MSG = [{"role": "user", "content": "Hi"}]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client() -> Iterator[llmkit.Client]:
    providers = [{"name": "primary", "adapter": "mock", "pricing": {"m": {"input": 1.0, "output": 2.0}}},
                 {"name": "backup", "adapter": "mock", "priority": 1}]
    with llmkit.Client(providers=providers, ledger=None, health_interval=None) as c:
        yield c


@pytest.fixture
def streamed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(source id, rows) of every ColumnDataSource.stream call."""
    calls: list[tuple[int, int]] = []
    original = ColumnDataSource.stream

    def spy(self: ColumnDataSource, new_data: Any, rollover: int | None = None) -> None:
        calls.append((id(self), len(next(iter(new_data.values())))))
        original(self, new_data, rollover)

    monkeypatch.setattr(ColumnDataSource, "stream", spy)
    return calls


def test_views_stream_only_new_points(client: llmkit.Client, streamed: list[tuple[int, int]]) -> None:
    now = [float(int(time.time()))]  # the ledger's records carry the real wall clock
    app = create_app(client, clock=lambda: now[0], bucket_s=1.0)
    assert isinstance(app, Dashboard)
    cost = app.views["cost"].source
    for _ in range(3):
        client.completion(model="m", messages=MSG)
    now[0] += 3.0
    app.refresh()
    assert len(cost.data["time"]) == app.store.timeline.total >= 2
    before = len(cost.data["time"])
    streamed.clear()
    app.refresh()  # no bucket finished: nothing is sent to the plots
    assert [c for c in streamed if c[0] == id(cost)] == []
    now[0] += 1.0
    app.refresh()
    assert [c for c in streamed if c[0] == id(cost)] == [(id(cost), 1)]  # one new point, not the history
    assert len(cost.data["time"]) == before + 1
    assert cost.data["c0"][-1] == pytest.approx(client.usage()["cost_usd"].sum())


def test_html_views_carry_stable_hooks(client: llmkit.Client) -> None:
    client.completion(model="m", messages=MSG)
    app = create_app(client)
    kpis, cards = app.views["kpis"].pane.object, app.views["providers"].pane.object
    assert 'data-kpi="requests"' in kpis and 'data-value="1"' in kpis
    assert '<span class="llmkit-breaker llmkit-breaker--closed" data-provider="primary" data-state="closed"' in cards
    assert ">CLOSED</span>" in cards
    table = app.views["recent"].table.value
    assert list(table["provider"]) == ["primary"] and "prompt" not in table.columns


def test_client_dashboard_and_serve_dashboard(client: llmkit.Client) -> None:
    assert isinstance(client.dashboard(refresh_s=5.0), Dashboard)
    handle = client.serve_dashboard()
    try:
        assert handle.url == f"http://127.0.0.1:{handle.port}/" and handle.running
        with urllib.request.urlopen(handle.url, timeout=30) as reply:
            page = reply.read().decode()
        assert reply.status == 200 and "llmkit dashboard" in page
    finally:
        handle.stop()
    handle.stop()  # idempotent
    assert not handle.running


def test_serve_refuses_a_busy_port(client: llmkit.Client) -> None:
    with serve(client) as first, pytest.raises(OSError, match=r"cannot serve the dashboard on 127\.0\.0\.1"):
        serve(client, port=first.port, start_timeout=10.0)
    pn.state.kill_all_servers()


def test_importing_llmkit_or_its_cli_does_not_import_panel() -> None:
    code = ("import sys, llmkit, llmkit.cli, llmkit.dashboard, llmkit.demo; "
            "assert 'panel' not in sys.modules and 'bokeh' not in sys.modules, 'panel imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_cli_help_and_config_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "demo" in capsys.readouterr().out
    args = build_parser().parse_args(["demo", "--duration", "5", "--port", "8123", "--show"])
    assert (args.command, args.duration, args.port, args.show, args.address) == ("demo", 5.0, 8123, True, "127.0.0.1")
    args = build_parser().parse_args(["dashboard", "--config", "x.toml", "--address", "0.0.0.0"])
    assert (args.config, args.address, args.demo) == ("x.toml", "0.0.0.0", False)
    assert main(["dashboard", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "no such config file" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_workload_trips_and_recovers_the_primary_breaker() -> None:
    from llmkit.demo import run_demo

    lines: list[str] = []
    # the breaker (reset_timeout 4 s) can close ~5 s in at the earliest; 9 s leaves room on a busy 2-core machine
    summary = run_demo(duration_s=9.0, dashboard=False, rate=16.0, outage_at_s=0.5, outage_s=2.5, out=lines.append)
    assert summary["requests"] > 10 and summary["cost_usd"] > 0
    assert summary["outages"] == 1
    openai = [(old, new) for name, old, new in summary["breaker_transitions"] if name == "openai"]
    assert openai[0] == ("closed", "open") and openai[-1][1] == "closed"  # opened in the outage, closed after
    assert set(summary["by_provider"]) >= {"openai", "anthropic"}
    assert "requests" in lines[-1]


def test_in_a_notebook_new_points_are_pushed_over_the_comm(client: llmkit.Client) -> None:
    """Rendered as Jupyter does (a held document and a comm), each refresh sends the new plot points."""
    from bokeh.document import Document
    from panel.io.notebook import render_mimebundle
    from pyviz_comms import Comm

    class RecordingComm(Comm):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self._comm = True  # "open"
            self.sent: list[Any] = []

        def init(self) -> None:
            pass

        def send(self, data: Any = None, metadata: Any = None, buffers: Any = ()) -> None:
            self.sent.append(data)

        def close(self) -> None:
            pass

    now = [float(int(time.time()))]
    app = create_app(client, clock=lambda: now[0], bucket_s=1.0)
    doc, comm = Document(), RecordingComm()
    render_mimebundle(app._render_model(doc, comm), doc, comm)
    client.completion(model="m", messages=MSG)
    app.refresh()
    comm.sent.clear()
    now[0] += 2.0  # new buckets for the plots, nothing new for the HTML views' text... but the plots
    app.refresh()
    assert any("ColumnsStreamed" in str(message) for message in comm.sent)
