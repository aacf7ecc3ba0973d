"""The cell's replicated state machine: namespace, handles, locks, sessions and events."""
