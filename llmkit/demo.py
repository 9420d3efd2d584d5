"""The offline demo: a realistic workload on several loopback providers, with the live dashboard.

    >>> from llmkit.demo import run_demo
    >>> summary = run_demo(duration_s=60, show=True)     # or `llmkit demo --duration 60 --show`

Four providers, no network and no real key: ``openai`` (a loopback ``FakeOpenAIServer`` serving
gpt-4o-mini, priced by genai-prices, rate limited so requests wait), ``anthropic`` (a loopback
``FakeAnthropicServer`` serving claude-3-5-haiku-20241022), ``local`` (an Ollama-flavoured fake,
priced at 0 through a ``pricing`` override) and ``mock`` (the in-process mock). gpt-4o-mini falls
back to claude-3-5-haiku and then to the local model. Every few seconds a server answers 500, 503, 529
or 429 with ``retry-after``; every ``outage_every_s`` the primary (openai) goes down for
``outage_s`` seconds, so its breaker opens, probes half-open and closes once health checks pass.
The traffic mixes priorities (``completion_async`` + ``get_result``), plain calls and streams, at a
bounded rate, each request with a bounded timeout. The ledger lives in memory.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from ._client import Client
from .testing import FakeAnthropicServer, FakeOpenAIServer

__all__ = ["DemoWorld", "run_demo"]

OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-3-5-haiku-20241022"
LOCAL_MODEL = "llama3.2"
MOCK_MODEL = "mock-small"
DEMO_KEY = "sk-demo-not-a-real-key"
PROMPTS = ("Summarise this support ticket in one line.", "Classify the sentiment of: 'the update broke my app'.",
           "Translate 'good morning' into French.", "Write a haiku about circuit breakers.",
           "Extract the invoice total from: 'Total due: $41.20'.", "Suggest a name for a data pipeline.")
REPLY = ("Here is a concise answer. The request was routed by llmkit through its fallback chain, with retries, "
         "rate limits and circuit breakers watching every provider, and its cost was recorded in the ledger.")


class DemoWorld:
    """The demo's fake servers and the client routed over them (a context manager; ``close()`` stops all)."""

    def __init__(self, *, health_interval: float = 3.0, budget_usd: float | None = 5.0,
                 ledger: str | None = ":memory:") -> None:
        self.openai = FakeOpenAIServer(reply=REPLY, latency=0.08, fast=True, max_recorded=0)
        self.anthropic = FakeAnthropicServer(reply=REPLY, latency=0.15, fast=True, max_recorded=0)
        self.local = FakeOpenAIServer(flavor="ollama", reply=REPLY, latency=0.3, fast=True, max_recorded=0)
        self.servers = {"openai": self.openai, "anthropic": self.anthropic, "local": self.local}
        for server in self.servers.values():
            server.start()
        providers: list[dict[str, Any]] = [
            {"name": "openai", "adapter": "openai", "base_url": self.openai.url, "api_key": DEMO_KEY,
             "models": [OPENAI_MODEL], "priority": 0, "rate_limit": "6/second", "max_retries": 1, "timeout": 5.0,
             "breaker": {"fail_max": 3, "reset_timeout": 4.0}},
            {"name": "anthropic", "adapter": "anthropic", "base_url": self.anthropic.base,
             "api_key": "sk-ant-demo-not-a-real-key", "models": [ANTHROPIC_MODEL], "priority": 1,
             "rate_limit": "4/second", "max_retries": 2, "timeout": 5.0,
             "breaker": {"fail_max": 4, "reset_timeout": 5.0}},
            {"name": "local", "adapter": "openai_compatible", "base_url": self.local.url, "models": [LOCAL_MODEL],
             "priority": 2, "max_concurrency": 4, "max_retries": 0, "timeout": 5.0, "options": {"health_path": "/"},
             "pricing": {LOCAL_MODEL: {"input": 0.0, "output": 0.0}}},
            {"name": "mock", "adapter": "mock", "models": ["mock-*"], "priority": 3, "max_retries": 0,
             "pricing": {MOCK_MODEL: {"input": 0.5, "output": 1.5}},
             "options": {"latency": [0.02, 0.25], "failure_rate": 0.08, "seed": 7,
                         "failure_kinds": ["server", "overloaded"], "replies": [REPLY]}},
        ]
        fallbacks = {OPENAI_MODEL: [ANTHROPIC_MODEL, LOCAL_MODEL], ANTHROPIC_MODEL: [OPENAI_MODEL]}
        try:
            self.client = Client(providers=providers, fallbacks=fallbacks, ledger=ledger, budget_usd=budget_usd,
                                 budget_period="day", health_interval=health_interval, timeout=20.0)
        except BaseException:
            self._stop_servers()
            raise

    def _stop_servers(self) -> None:
        for server in self.servers.values():
            server.stop()

    def close(self) -> None:
        self.client.close()
        self._stop_servers()

    def __enter__(self) -> DemoWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Workload:
    """Background traffic and chaos on a ``DemoWorld``; ``start()``, then ``stop()`` (joins the threads)."""

    def __init__(self, world: DemoWorld, *, rate: float = 8.0, outage_at_s: float = 8.0, outage_s: float = 15.0,
                 outage_every_s: float = 60.0, seed: int = 0) -> None:
        self.world = world
        self.client = world.client
        self.rate = rate
        self.outage_at_s, self.outage_s, self.outage_every_s = outage_at_s, outage_s, outage_every_s
        self.rng = random.Random(seed)
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.outages = 0
        self.failed = 0
        self._lock = threading.Lock()

    def start(self) -> Workload:
        jobs: list[tuple[str, Callable[[], None]]] = [
            ("interactive", self._interactive), ("interactive-2", self._interactive), ("batch", self._batch),
            ("streams", self._streams), ("chaos", self._chaos)]
        for name, job in jobs:
            thread = threading.Thread(target=job, name=f"llmkit-demo-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30.0)
        if self.world.openai.down:
            self.world.openai.set_down(False)

    # -- traffic -------------------------------------------------------------------------------

    def _pick_model(self) -> str:
        return self.rng.choices([OPENAI_MODEL, ANTHROPIC_MODEL, LOCAL_MODEL, MOCK_MODEL], [6, 3, 1, 1])[0]

    def _messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": self.rng.choice(PROMPTS)}]

    def _pause(self, share: float) -> bool:
        """Wait so this thread contributes ``share`` of the target rate; False once stopping."""
        return not self.stopping.wait(self.rng.expovariate(self.rate * share))

    def _guard(self, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception:  # the dashboard shows every failure; the demo keeps going
            with self._lock:
                self.failed += 1

    def _interactive(self) -> None:
        while self._pause(0.3):
            self._guard(lambda: self.client.completion(model=self._pick_model(), messages=self._messages(),
                                                       max_tokens=200, priority=0, timeout=15.0))

    def _batch(self) -> None:
        while self._pause(0.08):  # a burst of 6 low-priority jobs every ~2 s on average
            ids: list[str] = []
            for _ in range(6):
                self._guard(functools.partial(self._submit, ids))
            for request_id in ids:
                self._guard(functools.partial(self.client.get_result, request_id, timeout=25.0))

    def _submit(self, ids: list[str]) -> None:
        ids.append(self.client.completion_async(model=self._pick_model(), messages=self._messages(), max_tokens=200,
                                                priority=5, timeout=20.0))

    def _streams(self) -> None:
        def consume() -> None:
            stream = self.client.stream(model=self.rng.choice([OPENAI_MODEL, ANTHROPIC_MODEL]),
                                        messages=self._messages(), max_tokens=200, priority=1, timeout=15.0)
            for _ in stream:
                pass

        while self._pause(0.1):
            self._guard(consume)

    # -- chaos ---------------------------------------------------------------------------------

    def _chaos(self) -> None:
        started = time.monotonic()
        w = self.world
        tick = 0
        while not self.stopping.wait(0.5):
            tick += 1
            for server, (low, high) in ((w.openai, (0.04, 0.2)), (w.anthropic, (0.08, 0.35)),
                                        (w.local, (0.2, 0.6))):
                server.latency = self.rng.uniform(low, high)  # a float the server reads per answer
            if tick % 9 == 0:
                w.openai.enqueue_error(500)
            if tick % 13 == 0:
                w.anthropic.enqueue_error(529, type="overloaded_error", message="Overloaded")
            if tick % 23 == 0:
                w.local.enqueue_error(503, message="model is loading")  # no retry, no fallback: the request fails
            if tick % 17 == 0:
                w.openai.enqueue_error(429, retry_after=1, message="Rate limit reached for gpt-4o-mini")
            elapsed = time.monotonic() - started - self.outage_at_s
            in_outage = elapsed >= 0 and (elapsed % self.outage_every_s) < self.outage_s
            if in_outage and not w.openai.down:
                w.openai.set_down(True)
                self.outages += 1
            elif not in_outage and w.openai.down:
                w.openai.set_down(False)


def run_demo(duration_s: float | None = None, port: int = 0, show: bool = False, *, address: str = "127.0.0.1",
             refresh_s: float = 1.0, dashboard: bool = True, rate: float = 8.0, outage_at_s: float = 8.0,
             outage_s: float = 15.0, outage_every_s: float = 60.0, budget_usd: float | None = 5.0,
             seed: int = 0, out: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the offline demo for ``duration_s`` seconds (None: until Ctrl-C) and return a summary.

    Serves the dashboard (``dashboard=False`` to skip it) at ``http://address:port/`` and prints its URL.
    """
    with DemoWorld(budget_usd=budget_usd) as world:
        handle = None
        if dashboard:
            handle = world.client.serve_dashboard(port=port, address=address, show=show, refresh_s=refresh_s)
            out(f"llmkit demo dashboard: {handle.url}  (Ctrl-C to stop)")
        workload = Workload(world, rate=rate, outage_at_s=outage_at_s, outage_s=outage_s,
                            outage_every_s=outage_every_s, seed=seed).start()
        out(f"providers: {', '.join(world.client.providers)}; the primary (openai) goes down at "
            f"{outage_at_s:g} s for {outage_s:g} s" + (f", every {outage_every_s:g} s" if duration_s is None else ""))
        try:
            workload.stopping.wait(duration_s)
        except KeyboardInterrupt:
            out("stopping...")
        finally:
            workload.stop()
            if handle is not None:
                handle.stop()
        summary = summarize(world.client, workload)
    out(format_summary(summary))
    return summary


def summarize(client: Client, workload: Workload | None = None) -> dict[str, Any]:
    usage = client.usage()
    by_provider = usage.groupby("provider", observed=True).size().to_dict() if len(usage) else {}
    events = client.event_list("breaker")
    return {
        "requests": len(usage),
        "errors": int((usage["status"] == "error").sum()),
        "fallbacks": int(usage["fallback"].sum()),
        "cost_usd": float(usage["cost_usd"].sum()),
        "by_provider": {str(k): int(v) for k, v in by_provider.items()},
        "breaker_transitions": [(e.provider, e.detail.get("old"), e.detail.get("new")) for e in events],
        "outages": workload.outages if workload is not None else 0,
    }


def format_summary(summary: dict[str, Any]) -> str:
    providers = ", ".join(f"{k} {v}" for k, v in summary["by_provider"].items())
    opened = sum(1 for _, _, new in summary["breaker_transitions"] if new == "open")
    return (f"{summary['requests']} requests ({summary['errors']} failed, {summary['fallbacks']} via fallback), "
            f"${summary['cost_usd']:.4f} in total; by provider: {providers or 'none'}; "
            f"breakers opened {opened} time(s) over {summary['outages']} outage(s)")
