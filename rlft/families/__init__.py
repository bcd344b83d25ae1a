"""Model families rlft can train, one module per family (its components, loader and policy)."""
