"""The served dashboard in a real browser (headless Debian chromium via playwright).

Live numbers must match ``client.usage()``, and a provider's breaker badge must go CLOSED -> OPEN ->
HALF-OPEN -> CLOSED through an outage. Every wait polls a page condition; nothing sleeps.
Saves ``artifacts/dashboard.png``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llmkit

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--host-resolver-rules=MAP fonts.googleapis.com 127.0.0.1:9"]
MSG = [{"role": "user", "content": "Hello dashboard"}]
TIMEOUT_MS = 30_000

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")]
sync_api = pytest.importorskip("playwright.sync_api")
pn = pytest.importorskip("panel")


@pytest.fixture
def client() -> Iterator[llmkit.Client]:
    providers = [
        {"name": "primary", "adapter": "mock", "max_retries": 0, "breaker": {"fail_max": 2, "reset_timeout": 2.0},
         "options": {"latency": [0.001, 0.01]}, "pricing": {"m": {"input": 1.0, "output": 2.0}}},
        {"name": "backup", "adapter": "mock", "priority": 1, "options": {"latency": [0.001, 0.01]},
         "pricing": {"m": {"input": 3.0, "output": 4.0}}},
    ]
    with llmkit.Client(providers=providers, ledger=None, health_interval=None, budget_usd=1.0) as c:
        yield c


@pytest.fixture
def served(client: llmkit.Client) -> Iterator[Any]:
    handle = client.serve_dashboard(refresh_s=0.25, bucket_s=0.5)
    try:
        yield handle
    finally:
        handle.stop()
        pn.state.kill_all_servers()
    assert not handle.running


@pytest.fixture
def page() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1440, "height": 1400})
        finally:
            browser.close()


def badge(page: Any, provider: str) -> Any:
    return page.locator(f'.llmkit-breaker[data-provider="{provider}"]')


def kpi(page: Any, name: str) -> Any:
    return page.locator(f'[data-kpi="{name}"] .value')


def wait_for_points(page: Any, column: str, at_least: int) -> None:
    """Poll until a Bokeh data source in the browser with ``column`` holds ``at_least`` rows."""
    page.wait_for_function("""([column, atLeast]) => {
        for (const doc of Bokeh.documents) for (const m of doc._all_models.values()) {
            if (m.type !== 'ColumnDataSource' || m.data === undefined) continue;
            const values = m.data instanceof Map ? m.data.get(column) : m.data[column];
            if (values !== undefined && values.length >= atLeast) return true;
        }
        return false; }""", arg=[column, at_least], timeout=TIMEOUT_MS)


def test_live_numbers_and_breaker_states_in_a_browser(client: llmkit.Client, served: Any, page: Any) -> None:
    expect = sync_api.expect
    assert served.url.startswith("http://127.0.0.1:")
    page.goto(served.url)
    expect(badge(page, "primary")).to_have_text("CLOSED", timeout=TIMEOUT_MS)
    expect(badge(page, "backup")).to_have_attribute("data-state", "closed")

    for _ in range(12):
        client.completion(model="m", messages=MSG)
    usage = client.usage()
    expect(kpi(page, "requests")).to_have_attribute("data-value", str(len(usage)), timeout=TIMEOUT_MS)
    shown_cost = float(kpi(page, "cost").get_attribute("data-value"))
    assert shown_cost == pytest.approx(float(usage["cost_usd"].sum()), rel=1e-9) and shown_cost > 0
    expect(kpi(page, "budget")).to_contain_text("%")

    client.provider("primary").set_down(True)  # an outage: two failures open the breaker, backup answers
    for _ in range(4):
        client.completion(model="m", messages=MSG)
    assert client.health().set_index("provider").loc["primary", "breaker_state"] == "open"
    expect(badge(page, "primary")).to_have_text("OPEN", timeout=TIMEOUT_MS)
    expect(badge(page, "primary")).to_have_attribute("data-state", "open")
    expect(badge(page, "backup")).to_have_text("CLOSED")
    # past reset_timeout (2 s) the breaker would let a probe through: the badge says so on its own
    expect(badge(page, "primary")).to_have_text("HALF-OPEN", timeout=TIMEOUT_MS)

    client.provider("primary").set_down(False)
    client.check_health("primary")  # a passing check half-opens the breaker; the next call probes and closes it
    client.completion(model="m", messages=MSG)
    expect(badge(page, "primary")).to_have_text("CLOSED", timeout=TIMEOUT_MS)

    usage = client.usage()
    expect(kpi(page, "requests")).to_have_attribute("data-value", str(len(usage)), timeout=TIMEOUT_MS)
    assert int(kpi(page, "errors").get_attribute("data-value")) == int((usage["status"] == "error").sum())
    assert int(kpi(page, "retries").get_attribute("data-value")) >= 0
    # the plots hold streamed points: cumulative cost, latency, and the finished breaker segments of
    # primary (closed, open, half-open) in the breaker timeline
    wait_for_points(page, "c0", 1)
    wait_for_points(page, "p50_0", 1)
    wait_for_points(page, "label", 3)
    expect(page.locator(".tabulator-row").first).to_contain_text("primary", timeout=TIMEOUT_MS)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
