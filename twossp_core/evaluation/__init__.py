"""Measuring models: perplexity, forward throughput, and (optionally) zero-shot tasks."""
