"""SliceGPT (Ashkboos et al. 2024): rotate the residual stream by PCA and slice the hidden dimension."""
