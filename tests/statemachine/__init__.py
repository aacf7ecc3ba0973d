"""Tests of the cell's replicated state machine."""
