"""Import cost: ``import llmkit`` vs ``import httpx`` vs ``import litellm`` (its own venv), fresh processes.

Each figure is the median over N fresh interpreters of the time the import statement itself takes
(interpreter start-up excluded; it is shown on its own line). Then ``python -X importtime`` shows which
third-party packages ``import llmkit`` pulled in and what each cost. Goal: ``import llmkit`` ≤ 150 ms.
llmkit's modules are byte-compiled first, as a wheel install does.

    python benchmarks/bench_import.py            # N = 9
    python benchmarks/bench_import.py --quick    # N = 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import ROOT, goal, litellm_env, litellm_python, machine, print_goals, table, write_json

GOAL_S = 0.150
HEAVY = ("pandas", "numpy", "panel", "bokeh", "genai_prices", "pydantic", "redis", "tornado", "httpx2",
         "pyarrow", "sqlalchemy", "aiohttp", "openai", "tiktoken", "IPython", "matplotlib")
_TIMER = "import time; t = time.perf_counter(); import {m}; print(time.perf_counter() - t)"


def timed(python: str, module: str, n: int, env: dict[str, str] | None = None) -> list[float]:
    out = []
    for _ in range(n):
        done = subprocess.run([python, "-c", _TIMER.format(m=module)], capture_output=True, text=True, env=env,
                              cwd=ROOT, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"import {module} failed under {python}: {done.stderr.strip()[-300:]}")
        out.append(float(done.stdout.strip().splitlines()[-1]))
    return out


def startup(python: str, n: int) -> float:
    import time

    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([python, "-c", "pass"], check=True, cwd=ROOT)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


_PROBE = ("import sys, json; before = set(sys.modules); import {m}; "
          "print(json.dumps(sorted({{n.split('.')[0] for n in set(sys.modules) - before}})))")


def pulled_in(python: str, module: str) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """What ``import module`` loaded that was not loaded before: (third-party, stdlib) top-level packages,
    each with the cumulative cost of its own line in ``-X importtime`` (seconds), costliest first."""
    import json

    done = subprocess.run([python, "-X", "importtime", "-c", _PROBE.format(m=module)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    new = set(json.loads(done.stdout.strip().splitlines()[-1])) - {module}
    costs: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        _, cumulative, name = line.split("|")
        name = name.strip()
        if name in new and cumulative.strip().isdigit():
            costs[name] = max(costs.get(name, 0.0), int(cumulative) / 1e6)
    ranked = sorted(((n, costs.get(n, 0.0)) for n in new), key=lambda kv: -kv[1])
    return ([kv for kv in ranked if kv[0] not in sys.stdlib_module_names],
            [kv for kv in ranked if kv[0] in sys.stdlib_module_names])


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = 3 if args.quick else args.n
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # as installed from a wheel: compiled once (an editable checkout under PYTHONDONTWRITEBYTECODE would
    # otherwise recompile every llmkit module in every process and measure the compiler, not the import)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "llmkit")], check=True, timeout=300)
    rows: list[list[Any]] = []
    figures: dict[str, float] = {}
    for module in ("llmkit", "httpx"):
        samples = timed(sys.executable, module, n, env)
        figures[module] = statistics.median(samples)
        rows.append([f"import {module}", f"{figures[module] * 1e3:,.0f} ms", f"{min(samples) * 1e3:,.0f} ms", n])
    lit = litellm_python()
    litellm_note = None
    if lit is None:
        litellm_note = "LiteLLM: not installed (run benchmarks/setup_litellm.sh)"
    else:
        samples = timed(lit, "litellm", max(3, n // 3), litellm_env())
        figures["litellm"] = statistics.median(samples)
        rows.append(["import litellm (benchmarks/.venv-litellm)", f"{figures['litellm'] * 1e3:,.0f} ms",
                     f"{min(samples) * 1e3:,.0f} ms", len(samples)])
    base = startup(sys.executable, n)
    rows.append(["(interpreter start-up, python -c pass)", f"{base * 1e3:,.0f} ms", "", n])
    print(f"Import time, median of fresh processes ({machine()})")
    print(table(["what", "median", "best", "runs"], rows))
    if litellm_note:
        print(litellm_note)
    elif "litellm" in figures:
        print(f"import litellm / import llmkit: {figures['litellm'] / figures['llmkit']:.1f}x")

    pulled, stdlib = pulled_in(sys.executable, "llmkit")
    print()
    print("Third-party packages `import llmkit` pulled in: "
          + (", ".join(f"{name} ({cost * 1e3:,.1f} ms)" for name, cost in pulled) if pulled else "none"))
    heavy = [name for name, _ in pulled if name in HEAVY]
    print("Heavy modules among them: " + (", ".join(heavy) if heavy else "none"))
    print("Costliest standard-library modules it loaded (-X importtime, cumulative): "
          + ", ".join(f"{name} {cost * 1e3:,.1f} ms" for name, cost in stdlib[:6]))

    goals = [goal("import llmkit (median, fresh process)", "≤ 150 ms", f"{figures['llmkit'] * 1e3:,.0f} ms",
                  figures["llmkit"] <= GOAL_S)]
    print_goals(goals)
    return {"benchmark": "import", "machine": machine(), "figures": figures, "pulled_in": pulled,
            "stdlib": stdlib[:10], "heavy": heavy, "goals": goals, "litellm_error": litellm_note}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a CI smoke run: 3 processes each")
    parser.add_argument("--n", type=int, default=9, help="fresh processes per module")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    write_json(args.json, run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
