"""Tests of llmkit.ledger: store, migrations, pricing."""
