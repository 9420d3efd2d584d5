"""Tests of llmkit.routing: router, limits, breaker, budget, health."""
