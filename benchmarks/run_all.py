"""Run every llmkit-vs-baseline benchmark, one fresh process each, then print the goals table.

    python benchmarks/run_all.py                    # the full runs (~15 minutes)
    python benchmarks/run_all.py --quick            # CI smoke runs (about a minute)
    python benchmarks/run_all.py --update-readme    # also rewrite the figures table in benchmarks/README.md

The commands it runs (each also works on its own; ``--help`` lists their options):

    python benchmarks/bench_overhead.py     # per-call overhead vs raw httpx (and LiteLLM), sequential
    python benchmarks/bench_throughput.py   # req/s at 1, 10, 50 callers vs raw httpx and LiteLLM's Router
    python benchmarks/bench_pipeline.py     # req/s through the whole pipeline on the mock adapter (--long: 1M)
    python benchmarks/bench_scale.py        # 1,000 concurrent callers on a 200 ms server, no rate limit
    python benchmarks/bench_import.py       # import llmkit vs httpx vs litellm
    python benchmarks/bench_cache.py        # response cache: hit vs miss, lookup cost, hits/s, a 100k-entry file
    python benchmarks/bench_embed.py        # client.embed of a column vs a hand-written httpx batch loop
    python benchmarks/bench_shared.py       # shared limits+breaker on Redis: overhead, one limit over 4 processes
    python benchmarks/bench_ledger.py       # a 1M-record ledger file next to an empty one (issue 12)
    python benchmarks/bench_batch.py        # client.map: 1,000 rows at 100 ms, rate-limited pace, 100k mock rows
    bash benchmarks/setup_litellm.sh        # once: LiteLLM in benchmarks/.venv-litellm (optional)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import HERE, machine, met_text

BENCHMARKS = ("overhead", "throughput", "pipeline", "scale", "import", "ledger", "cache", "batch", "embed", "shared")
README = HERE / "README.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"


def run_one(name: str, quick: bool, out: Path, timeout: float) -> dict[str, Any] | None:
    cmd = [sys.executable, str(HERE / f"bench_{name}.py"), "--json", str(out)] + (["--quick"] if quick else [])
    print(f"\n$ {' '.join(Path(c).name if i == 1 else c for i, c in enumerate(cmd) if c != str(out))}", flush=True)
    try:
        done = subprocess.run(cmd, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"bench_{name}.py passed its {timeout:g}s time limit")
        return None
    if done.returncode != 0 or not out.exists():
        print(f"bench_{name}.py failed (exit code {done.returncode})")
        return None
    return json.loads(out.read_text())


def markdown(results: dict[str, dict[str, Any] | None], quick: bool) -> str:
    lines = ["| benchmark | goal | target | measured | result |", "|---|---|---|---|---|"]
    for name, res in results.items():
        if res is None:
            lines.append(f"| {name} | (failed) | | | |")
            continue
        for g in res["goals"]:
            lines.append(f"| {name} | {g['goal']} | {g['target']} | {g['measured']} | {met_text(g['met'])} |")
    load = ""
    try:
        load = f", load average {os.getloadavg()[0]:.1f} at the end"
    except OSError:
        pass
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    lines.append("")
    lines.append(f"_{'Quick (smoke) run' if quick else 'Full run'} of `python benchmarks/run_all.py`, {stamp}, "
                 f"llmkit at {revision()}, {machine()}{load}._")
    return "\n".join(lines)


def revision() -> str:
    """The commit measured (``+changes`` when llmkit/ differs from it), or "an unknown commit"."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE.parent, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "llmkit"], capture_output=True, text=True,
                               cwd=HERE.parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "an unknown commit"
    return f"`{head}`{' + uncommitted changes' if dirty else ''}" if head else "an unknown commit"


def update_readme(text: str) -> None:
    content = README.read_text()
    if START not in content or END not in content:
        print(f"{README} has no {START} ... {END} markers: not updated")
        return
    content = re.sub(re.escape(START) + r".*?" + re.escape(END), f"{START}\n{text}\n{END}", content, flags=re.S)
    README.write_text(content)
    print(f"updated the figures table in {README}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI smoke runs")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"some of {','.join(BENCHMARKS)}")
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--timeout", type=float, default=1200.0, help="time limit of one benchmark (s)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; expected some of {list(BENCHMARKS)}")
    results: dict[str, dict[str, Any] | None] = {}
    with tempfile.TemporaryDirectory(prefix="llmkit-bench-") as tmp:
        for name in names:
            results[name] = run_one(name, args.quick, Path(tmp) / f"{name}.json", args.timeout)
    text = markdown(results, args.quick)
    print("\n" + text)
    if args.update_readme:
        update_readme(text)
    return 0 if all(r is not None for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
