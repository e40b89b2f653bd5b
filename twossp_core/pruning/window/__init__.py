"""Sliding-window depth pruning (Gromov et al. 2024): remove the most redundant run of consecutive blocks."""
