"""BlockPruner (Zhong et al. 2024): greedy removal of attention and FFN submodules by perplexity."""
