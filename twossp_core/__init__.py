"""twossp: 2SSP structured pruning for causal language models.

Importing this package is cheap and does not import torch; heavy modules load on use.
"""

__version__ = "0.1.0"
