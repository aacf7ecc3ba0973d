"""Peer transport: encoding and carrying Raft messages between members."""
