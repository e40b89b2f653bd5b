"""2SSP with a least-squares refit of the down projections (beyond the paper; no training)."""
