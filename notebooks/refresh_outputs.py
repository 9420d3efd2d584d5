"""Re-execute the tutorial notebooks in place and save them with their outputs, minus Panel/Bokeh JavaScript.

    pip install nbclient            # not a dependency of llmkit; only needed to refresh the stored outputs
    python notebooks/refresh_outputs.py                 # all notebooks in this folder
    python notebooks/refresh_outputs.py 04_cost_analysis.ipynb

Outputs are kept where they help a reader on GitHub. Panel and Bokeh outputs are JavaScript (tens of KB each)
that only a live notebook can show, so they are dropped; cells that produce them start with
``# NBVAL_IGNORE_OUTPUT`` so that nbval does not compare them. CI only runs the notebooks
(``pytest --nbval-lax``), so refreshing outputs is never required for tests to pass.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
JS_MIMES = {
    "application/javascript",
    "application/vnd.holoviews_load.v0+json",
    "application/vnd.holoviews_exec.v0+json",
    "application/vnd.bokehjs_load.v0+json",
    "application/vnd.bokehjs_exec.v0+json",
}


def is_js(output: dict) -> bool:
    """A Panel/Bokeh output: JavaScript mime types, Panel's loader HTML, or the empty display Panel leaves."""
    data = output.get("data", {})
    if JS_MIMES & set(data) or (output.get("output_type") == "display_data" and not data):
        return True
    html = data.get("text/html", "")
    return output.get("output_type") == "display_data" and ("data-root-id" in html or "esms-options" in html)


def refresh(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    # Run the kernel with this interpreter's environment (like `pytest --nbval-current-env`): a "python3"
    # kernelspec that says just `python` then finds this one first on PATH.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    client = NotebookClient(nb, timeout=300, kernel_name="python3", coalesce_streams=True,
                            resources={"metadata": {"path": str(HERE)}})
    client.execute()
    for index, cell in enumerate(nb.cells):
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        for output in cell.outputs:
            if output.get("output_type") == "error":
                raise SystemExit(f"{path.name}: cell {index} raised {output['ename']}: {output['evalue']}")
        dropped = [o for o in cell.outputs if is_js(o)]
        if dropped and not cell.source.startswith("# NBVAL_IGNORE_OUTPUT"):
            print(f"  note: cell {index} shows Panel/Bokeh output; start it with # NBVAL_IGNORE_OUTPUT")
        cell.outputs = [o for o in cell.outputs if not is_js(o)]
    nbformat.validate(nb)
    nbformat.write(nb, path)
    print(f"{path.name}: {time.perf_counter() - started:.1f} s, {path.stat().st_size / 1024:.0f} KB")


def main(argv: list[str]) -> int:
    paths = [HERE / name for name in argv] if argv else sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        refresh(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
