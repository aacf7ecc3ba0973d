"""Tests of the durable storage layer (lockcell.storage)."""
