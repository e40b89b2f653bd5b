"""Options of the sliding-window (consecutive blocks) method (torch-free): how the number of blocks removed is
rounded."""

from twossp_core.pruning.block_count import BlockCountConfig


class WindowConfig(BlockCountConfig):
    pass
