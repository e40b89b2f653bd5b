"""Running models: loading, block-wise forward passes and token log-likelihoods."""
