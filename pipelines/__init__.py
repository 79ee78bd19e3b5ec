"""Application builders: bind the deployment graph from typed arguments."""
