"""``panel serve dashboard/app.py``: the llmkit dashboard as a Panel script.

    panel serve dashboard/app.py                                  # the offline demo workload
    panel serve dashboard/app.py --args --config llmkit.toml      # a configured client instead

Thin on purpose: everything lives in ``llmkit.dashboard`` (and ``llmkit.demo``). The client (and, for
the demo, its fake servers and workload) is built once per server process and shared by every
browser session; each session gets its own store and refresh callback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import panel as pn

from llmkit import Client
from llmkit.dashboard import create_app


def _options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="panel serve dashboard/app.py --args")
    parser.add_argument("--config", metavar="FILE", help="a TOML config for llmkit.Client.from_config")
    parser.add_argument("--refresh", type=float, default=1.0, metavar="S", help="refresh period in seconds")
    return parser.parse_args(argv)


def _client(config: str | None) -> Any:
    if config:
        return Client.from_config(config)
    from llmkit.demo import DemoWorld, Workload

    world = DemoWorld()
    Workload(world).start()  # daemon threads: they end with the server process
    return world.client


args = _options(sys.argv[1:])
client = pn.state.as_cached(f"llmkit-client-{args.config or 'demo'}", _client, config=args.config)
create_app(client, refresh_s=args.refresh).servable(title="llmkit dashboard")
