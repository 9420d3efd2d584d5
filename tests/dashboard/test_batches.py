"""The dashboard's running batches: the store reads ``client.monitor.batches()``, the view renders them."""

from __future__ import annotations

import pytest

import llmkit
from llmkit.monitor import BatchProgress, track_batch, untrack_batch

pytest.importorskip("panel")


def test_running_batches_show_done_failed_spend_and_eta() -> None:
    from llmkit.dashboard.store import DashboardStore
    from llmkit.dashboard.views import RunningBatches

    now = [100.0]
    with llmkit.Client(ledger=None, health_interval=None) as client:
        store = DashboardStore(client)
        view = RunningBatches(store)
        store.refresh()
        assert 'data-running="0"' in view.pane.object
        progress = BatchProgress(400, clock=lambda: now[0])
        progress.done, progress.failed, progress.cached, progress.cost_usd = 100, 3, 10, 0.25
        now[0] += 10.0  # 100 rows in 10 s: 10 rows/s, 300 left
        track_batch(client._service, progress)
        store.refresh()
        html = view.pane.object
        assert 'data-running="1"' in html and f'data-batch="{progress.batch_id}"' in html
        assert "100 / 400" in html and ">3<" in html and "$0.250000" in html and "30 s" in html
        untrack_batch(client._service, progress)
        store.refresh()
        assert 'data-running="0"' in view.pane.object
