"""Pruning methods. `registry` maps user-facing names to configs (torch-free) and implementations."""
