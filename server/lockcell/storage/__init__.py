"""Durable storage of the Raft log, hard state, snapshots and the member's identity."""
