"""A/B of two versions of llmkit in ONE process: a git commit (``--base``, imported as ``llmkit_base``) against
the working tree (``llmkit``), on the same loop, in alternating rounds, so the machine's drift hits both.

A tool for measuring a change before committing it, not a goals benchmark (``run_all.py`` does not run it).
Each configuration runs twice, once with each version's clients built first (the client built second runs
a few percent faster, whatever the code), and both runs are printed. Wall-clock p50s on a busy 2-CPU machine
vary by tens of µs; trust what both orders agree on.

    python benchmarks/ab_commits.py                      # HEAD vs the working tree, mock adapter (~1 min)
    python benchmarks/ab_commits.py --base 2707036       # any commit
    python benchmarks/ab_commits.py --http               # + sequential calls to the loopback fake server,
                                                         #   memory and SQLite ledgers, with CPU per call
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import API_KEY, MESSAGES, MODEL, ROOT, fake_server, machine

MOCK = {"name": "mock", "adapter": "mock", "models": ["*"], "pricing": {MODEL: {"input": 0.15, "output": 0.6}}}
Variant = tuple[str, Callable[[], Any]]  # ("rps", returns a request count) or ("p50", returns latencies)


def export(commit: str, into: Path) -> None:
    """``llmkit`` at ``commit`` as the package ``llmkit_base`` in ``into``."""
    archive = subprocess.run(["git", "archive", commit, "llmkit"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "llmkit").rename(into / "llmkit_base")
    adapters = into / "llmkit_base" / "_adapters.py"  # the one place that names modules by their full path
    adapters.write_text(adapters.read_text().replace('"llmkit.providers.', '"llmkit_base.providers.'))


def variants(pkg: str, runner: asyncio.Runner, url: str | None, tmp: str) -> tuple[dict[str, Variant], list[Any]]:
    lk = importlib.import_module(pkg)
    build = importlib.import_module(f"{pkg}._validate").build_request
    mock = lk.Client(providers=[MOCK], ledger=None, health_interval=None)
    service = mock._service

    def own_loop() -> int:
        async def go() -> int:
            for _ in range(3):
                await asyncio.gather(*(service.execute(build(MODEL, MESSAGES)) for _ in range(100)))
            return 300
        return int(mock._loop.run(go()))

    def gathered() -> int:
        async def go() -> int:
            for _ in range(3):
                await asyncio.gather(*(mock.acompletion(model=MODEL, messages=MESSAGES) for _ in range(100)))
            return 300
        return runner.run(go())

    def sequential(client: Any, kind: str, n: int) -> Callable[[], list[float]]:
        def once() -> float:
            t = time.perf_counter()
            client.completion(model=MODEL, messages=MESSAGES)
            return time.perf_counter() - t

        async def aonce() -> float:
            t = time.perf_counter()
            await client.acompletion(model=MODEL, messages=MESSAGES)
            return time.perf_counter() - t

        async def in_loop() -> list[float]:  # a blocking call from a coroutine, as in a Jupyter cell
            return [once() for _ in range(n)]

        async def awaited() -> list[float]:
            return [await aonce() for _ in range(n)]

        if kind == "sync":
            return lambda: [once() for _ in range(n)]
        return lambda: runner.run(in_loop() if kind == "sync in a loop" else awaited())

    out: dict[str, Variant] = {"mock: pipeline on its own loop, gather": ("rps", own_loop),
                               "mock: acompletion, gather": ("rps", gathered)}
    for kind in ("sync", "async", "sync in a loop"):
        out[f"mock: {kind}, sequential"] = ("p50", sequential(mock, kind, 60))
    clients = [mock]
    if url is not None:
        config = {"name": "fake", "adapter": "openai", "api_key": API_KEY, "base_url": url, "models": ["*"]}
        memory = lk.Client(providers=[config], ledger=None)
        sqlite = lk.Client(providers=[config], ledger=os.path.join(tmp, f"{pkg}.sqlite3"))
        clients += [memory, sqlite]
        for label, client in (("memory", memory), ("SQLite", sqlite)):
            for kind in ("sync", "async", "sync in a loop"):
                out[f"http {label}: {kind}, sequential"] = ("p50", sequential(client, kind, 40))
    return out, clients


def measure(args: argparse.Namespace, url: str | None, tmp: str) -> None:
    runner = asyncio.Runner()
    order = ("llmkit", "llmkit_base") if args.swap else ("llmkit_base", "llmkit")
    built = {pkg: variants(pkg, runner, url, tmp) for pkg in order}
    a, b = built["llmkit_base"][0], built["llmkit"][0]
    names = [n for n in a if args.only in n]
    for name in names:  # warm up
        a[name][1]()
        b[name][1]()
    samples: dict[str, dict[str, list[float]]] = {n: {"A": [], "B": [], "Acpu": [], "Bcpu": []} for n in names}
    for r in range(args.rounds):
        for name in names:
            for label, table in ((("A", a), ("B", b)) if r % 2 == 0 else (("B", b), ("A", a))):
                kind, fn = table[name]
                c0, t0 = time.process_time(), time.perf_counter()
                got = fn()
                count = got if kind == "rps" else len(got)
                samples[name][f"{label}cpu"].append((time.process_time() - c0) / count)
                if kind == "rps":
                    samples[name][label].append(got / (time.perf_counter() - t0))
                else:
                    samples[name][label].extend(got)
    first = "the working tree's" if args.swap else "the base's"
    print(f"\nA = {args.base}, B = working tree; {first} clients built first; {args.rounds} rounds ({machine()})")
    print(f"{'variant':40} {'A':>10} {'B':>10}  {'B vs A':>18}  CPU/request A -> B")
    for name in names:
        s = samples[name]
        med = {k: statistics.median(v) for k, v in s.items()}
        cpu = f"{med['Acpu'] * 1e6:,.0f} -> {med['Bcpu'] * 1e6:,.0f} µs"
        if a[name][0] == "rps":
            print(f"{name:40} {med['A']:>8,.0f}/s {med['B']:>8,.0f}/s  {med['B'] / med['A']:>17.2f}x  {cpu}")
        else:
            diff = f"{(med['B'] - med['A']) * 1e6:+,.0f} µs p50"
            print(f"{name:40} {med['A'] * 1e6:>7,.0f} µs {med['B'] * 1e6:>7,.0f} µs  {diff:>18}  {cpu}")
    for clients in (built["llmkit_base"][1], built["llmkit"][1]):
        for client in clients:
            client.close()
    runner.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="HEAD", help="the commit to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--http", action="store_true", help="also sequential calls to the loopback fake server")
    parser.add_argument("--only", default="", help="only the variants whose name contains this")
    parser.add_argument("--swap", action="store_true", help=argparse.SUPPRESS)  # the second run, in a child
    parser.add_argument("--base-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.base_dir is None:  # the parent: export the base once, run both creation orders in children
        with tempfile.TemporaryDirectory(prefix="llmkit-ab-") as where:
            export(args.base, Path(where))
            rest = [a for a in (argv if argv is not None else sys.argv[1:])]
            for swap in ([], ["--swap"]):
                subprocess.run([sys.executable, __file__, *rest, *swap, "--base-dir", where], check=True)
        return 0
    sys.path.insert(0, args.base_dir)
    import llmkit

    if not Path(llmkit.__file__).resolve().is_relative_to(ROOT.resolve()):
        raise SystemExit(f"llmkit is imported from {llmkit.__file__}, not this working tree")
    with tempfile.TemporaryDirectory(prefix="llmkit-ab-") as tmp:
        if args.http:
            with fake_server() as url:
                measure(args, url, tmp)
        else:
            measure(args, None, tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
