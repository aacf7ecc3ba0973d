"""Pure, deterministic Raft core: tick, step and propose in; Ready batches out."""
