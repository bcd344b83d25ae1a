"""rlft's Hydra launcher plugins (installed with rlft; Hydra finds them in the hydra_plugins namespace)."""
