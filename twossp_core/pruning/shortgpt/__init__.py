"""ShortGPT (Men et al. 2024): remove the blocks that change the hidden state least."""
