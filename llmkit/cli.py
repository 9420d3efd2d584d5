"""The ``llmkit`` command: ``llmkit demo`` (the offline demo with its dashboard) and ``llmkit dashboard``.

    llmkit demo --duration 120 --show          # fake providers, an outage, the live dashboard
    llmkit dashboard --config llmkit.toml      # the dashboard of a configured client (ledger history,
                                               # health checks), until Ctrl-C
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence

from ._errors import ConfigError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmkit", description="llmkit: one routing client for LLM providers, with a live dashboard.",
        epilog="The dashboard needs the extra: pip install 'llmkit[dashboard]'.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run the offline demo (fake providers, failures, an outage) with the live dashboard",
        description="Drive a realistic offline workload through llmkit: a mock provider and loopback fakes of "
                    "OpenAI, Anthropic and Ollama, with fallbacks, rate limits, injected 500/529/429 errors and an "
                    "outage of the primary provider. Serves the live dashboard and prints its URL.")
    demo.add_argument("--duration", type=float, default=None, metavar="S",
                      help="stop after S seconds (default: run until Ctrl-C)")
    _serve_options(demo)
    demo.add_argument("--no-dashboard", action="store_true", help="run the workload without serving the dashboard")

    dash = commands.add_parser(
        "dashboard", help="serve the live dashboard of a client",
        description="Serve the live dashboard until Ctrl-C. With --config, for the client that file describes "
                    "(its ledger's history and the providers' health checks); with --demo, for the offline demo; "
                    "otherwise for llmkit.Client() (keys from the environment, else the mock).")
    source = dash.add_mutually_exclusive_group()
    source.add_argument("--demo", action="store_true", help="run the offline demo workload (same as `llmkit demo`)")
    source.add_argument("--config", metavar="FILE", help="a TOML config file for llmkit.Client.from_config")
    _serve_options(dash)
    return parser


def _serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, metavar="P", help="port to serve on (default: any free port)")
    parser.add_argument("--address", default="127.0.0.1", metavar="A",
                        help="address to bind (default 127.0.0.1: only this machine can connect)")
    parser.add_argument("--show", action="store_true", help="open the dashboard in a browser")
    parser.add_argument("--refresh", type=float, default=1.0, metavar="S", help="refresh period in seconds (default 1)")


def _run_demo(args: argparse.Namespace, duration: float | None, dashboard: bool = True) -> int:
    from .demo import run_demo

    run_demo(duration_s=duration, port=args.port, show=args.show, address=args.address, refresh_s=args.refresh,
             dashboard=dashboard)
    return 0


def _serve_client(args: argparse.Namespace) -> int:
    from ._client import Client

    client = Client.from_config(args.config) if args.config else Client()
    try:
        handle = client.serve_dashboard(port=args.port, address=args.address, show=args.show,
                                        refresh_s=args.refresh)
        print(f"llmkit dashboard: {handle.url}  (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopping...")
        finally:
            handle.stop()
    finally:
        client.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmkit`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _run_demo(args, args.duration, dashboard=not args.no_dashboard)
        if args.demo:
            return _run_demo(args, None)
        return _serve_client(args)
    except ConfigError as exc:
        print(f"llmkit: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        if exc.name in ("panel", "bokeh", "param"):
            print(f"llmkit: the dashboard needs Panel: pip install 'llmkit[dashboard]' ({exc})", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
