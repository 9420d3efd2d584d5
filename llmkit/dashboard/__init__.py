"""llmkit's live Panel dashboard: ``store`` (no widgets) -> ``views`` (read the store) -> ``app`` (assembles).

Needs the ``dashboard`` extra (``pip install "llmkit[dashboard]"``). Usually reached through
``client.dashboard()`` (inline in a notebook) or ``client.serve_dashboard()`` (a browser tab);
``import llmkit`` never imports Panel.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DashboardHandle", "DashboardStore", "create_app", "serve"]


def __getattr__(name: str) -> Any:  # imported on first use: Panel takes most of a second to import
    if name == "DashboardStore":
        from .store import DashboardStore

        return DashboardStore
    if name in ("create_app", "serve", "DashboardHandle"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'llmkit.dashboard' has no attribute {name!r}")
