"""The dashboard shows the cache's hit rate and the dollars it saved (read through public names only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import MODEL, MSG, mock_client

pytest.importorskip("panel")


def test_the_dashboard_counts_hits_and_dollars_saved(cache_path: Path) -> None:
    from llmkit.dashboard.store import DashboardStore
    from llmkit.dashboard.views import KPIs

    with mock_client(cache_path) as client:
        first = client.completion(MODEL, MSG)
        for _ in range(3):
            client.completion(MODEL, MSG)
        store = DashboardStore(client)
        store.refresh()
        html = KPIs(store).render()
    assert first.cost_usd is not None
    assert store.requests == 4 and store.cache_hits == 3
    assert store.saved_usd == pytest.approx(3 * first.cost_usd)
    assert 'data-kpi="cache"' in html and "75.0%" in html and 'data-value="3"' in html
