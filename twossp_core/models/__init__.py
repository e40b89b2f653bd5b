"""Model families, one per Hugging Face `model_type`: an adapter module here (module names, imports torch) and
its torch-free count formula in `families/` of the same name, both named in `registry.py`."""
