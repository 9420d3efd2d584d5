"""The package's layers hold: import-linter's contracts pass, and the dashboards touch no private
attribute of the client (they read it through public names: ``client.monitor``, ``usage()``, ...)."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_SOURCES = sorted((ROOT / "llmkit" / "dashboard").glob("*.py")) + sorted((ROOT / "dashboard").glob("*.py"))


def client_private_names() -> set[str]:
    """The private attributes of a ``Client``: its class's and a live instance's."""
    import llmkit

    client = llmkit.Client(ledger=None, health_interval=None)
    try:
        names = set(vars(llmkit.Client)) | set(vars(client))
    finally:
        client.close()
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


PRIVATE = client_private_names()


def private_attributes(source: str) -> list[str]:
    """Accesses in ``source`` of a client's private attribute on anything but ``self``/``cls``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and node.attr in PRIVATE
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            found.append(f"{ast.unparse(node)} (line {node.lineno})")
    return found


def test_the_checker_sees_a_private_access() -> None:
    assert private_attributes("def f(client):\n    return client._service.ledger\n") == ["client._service (line 2)"]
    assert private_attributes("def f(self):\n    return self._service, client.monitor, pn._servers\n") == []
    assert {"_service", "_loop"} <= PRIVATE


@pytest.mark.parametrize("path", DASHBOARD_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dashboards_use_public_names_only(path: Path) -> None:
    assert private_attributes(path.read_text()) == []


@pytest.mark.timeout(120)
def test_import_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports")
    assert exe is not None, "import-linter is a dev dependency: pip install -e '.[dev]'"
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "Contracts: 5 kept, 0 broken." in out.stdout  # layers, public-only dashboards, three heavy-library rules
