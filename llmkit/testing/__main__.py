"""``python -m llmkit.testing serve ...``: run loopback fake providers in their own process."""

from __future__ import annotations

from . import main

raise SystemExit(main())
