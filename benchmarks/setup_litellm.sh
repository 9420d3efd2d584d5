#!/usr/bin/env bash
# Create benchmarks/.venv-litellm: a venv of its own holding LiteLLM (plus llmkit's runtime deps), used
# only by the benchmarks' LiteLLM comparisons. LiteLLM is never a runtime or test dependency of llmkit.
#
#   bash benchmarks/setup_litellm.sh            # PYTHON=python3.11 bash ... to pick the interpreter
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="$here/.venv-litellm"
python="${PYTHON:-python3}"

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet litellm
# llmkit's own runtime dependencies, read from pyproject.toml (llmkit itself is not installed there)
mapfile -t deps < <("$venv/bin/python" - "$root/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
PY
)
"$venv/bin/python" -m pip install --quiet "${deps[@]}"
"$venv/bin/python" -c "import importlib.metadata as m; print('litellm', m.version('litellm'), 'installed in $venv')"
