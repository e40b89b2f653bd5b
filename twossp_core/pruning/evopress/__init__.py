"""EvoPress (Sieberling et al. 2024): evolutionary search over which attention/FFN submodules to drop."""
