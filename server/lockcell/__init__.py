"""lockcell: a Chubby-style lock service replicated with Raft."""

__version__ = "0.1.0"
