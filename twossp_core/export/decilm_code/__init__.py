"""The configuration and modeling files a `decilm` export ships (copied verbatim next to its weights).

Only torch and transformers may be imported here: the exported directory loads without twossp.
"""
