"""2SSP: two-stage structured pruning (width: FFN neurons; depth: attention modules)."""
