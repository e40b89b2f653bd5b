"""Calibration and evaluation text: sources (local files, hub datasets) and token windows."""
