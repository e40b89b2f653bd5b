"""Saving pruned models as Hugging Face directories (`save.save_pruned`) and loading them back
(`load.load_pruned`)."""
