"""Each supported family's torch-free half: the parameter counts of one block computed from config.json.

A family's adapter (`twossp_core/models/<family>.py`, which imports torch) knows its module names; the module
of the same name here knows its count formula. The registry maps each `model_type` to both, so requests can be
checked and memory planned before torch is imported.
"""
