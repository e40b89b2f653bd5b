"""Options of ShortGPT (torch-free): how the number of blocks removed is rounded."""

from twossp_core.pruning.block_count import BlockCountConfig


class ShortGPTConfig(BlockCountConfig):
    pass
