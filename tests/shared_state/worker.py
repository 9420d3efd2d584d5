"""One worker process for the shared-state tests: builds a client on the shared Redis, runs a bounded
job, prints a JSON summary on stdout. ``python worker.py '<json spec>'``."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import llmkit

MESSAGES = [{"role": "user", "content": "hello"}]


def build(spec: dict[str, Any]) -> llmkit.Client:
    provider = {"name": "p", "adapter": "openai", "max_retries": 0, "api_key": "sk-test", "base_url": spec["base_url"],
                **spec.get("provider", {})}
    return llmkit.Client(providers=[provider], ledger=None, health_interval=None, shared_state=spec["redis"],
                         namespace=spec.get("namespace", "llmkit"), budget_usd=spec.get("budget_usd"),
                         timeout=30.0)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": 0, "errors": {}, "cost": 0.0}
    deadline = time.monotonic() + spec.get("max_seconds", 20.0)
    with build(spec) as client:
        if "start_at" in spec:  # warm up (imports, connections, scripts), then start with the others
            client.check_health()
            time.sleep(max(0.0, spec["start_at"] - time.time()))
        for _ in range(spec["requests"]):
            if time.monotonic() > deadline:
                break
            try:
                resp = client.completion(model="gpt-4o", messages=MESSAGES, max_tokens=spec.get("max_tokens", 16))
            except llmkit.LLMError as exc:
                name = type(exc).__name__
                out["errors"][name] = out["errors"].get(name, 0) + 1
                if spec.get("stop_on") == name:
                    break
            else:
                out["ok"] += 1
                out["cost"] += resp.cost_usd or 0.0
        health = client.health()
        out["breaker_state"] = str(health.loc[0, "breaker_state"])
        out["shared_events"] = [e.detail.get("state") for e in client.event_list("shared_state")]
        status = client.budget_status()
        out["budget"] = None if status is None else {k: status[k] for k in ("spent_usd", "reserved_usd")}
    return out


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
