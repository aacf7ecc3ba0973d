"""The driver loop where the Raft core meets storage, transport and the state machine."""
