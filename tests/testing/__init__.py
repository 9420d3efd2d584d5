"""Tests of llmkit.testing: the loopback fake providers."""
