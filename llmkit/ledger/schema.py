"""The ledger's columns and what kind of value each holds (no I/O, no imports beyond the stdlib).

``FIELDS`` is the order of ``LedgerRecord``'s fields and of the ``requests`` table's columns as the ledger
reads and writes them (``store`` checks the two agree). The kinds say how each column is kept in memory
(``store``), packed into column blocks (``blocks``) and typed in DataFrames (``llmkit.frames``).
"""

from __future__ import annotations

FIELDS: tuple[str, ...] = (
    "request_id", "time", "started", "provider", "model", "requested_model", "status", "error_type",
    "error_message", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "usage_estimated", "cost_usd", "latency_s", "attempts", "fallback", "stream", "priority",
    "metadata", "prompt", "session_id", "kind", "cached", "cost_saved_usd", "usage_suspect",
)
FLOATS = ("time", "started", "cost_usd", "latency_s", "cost_saved_usd")  # cost_usd: NaN when unpriced
INTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
        "attempts", "priority")
BOOLS = ("usage_estimated", "fallback", "stream", "cached", "usage_suspect")
CODED = ("provider", "model", "requested_model", "status", "error_type", "session_id", "kind")  # code -1 is None
TEXTS = ("request_id", "error_message", "metadata", "prompt")  # metadata: compact JSON or None
STATUSES = ("ok", "error", "cancelled")

assert sorted(FIELDS) == sorted(FLOATS + INTS + BOOLS + CODED + TEXTS)
