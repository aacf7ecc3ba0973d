"""lockcell_operator: the kopf operator that runs lockcell cells on Kubernetes."""
