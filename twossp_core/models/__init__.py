"""Model adapters, one per Hugging Face `model_type`."""
