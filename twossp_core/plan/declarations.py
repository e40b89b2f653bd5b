"""What a method declares next to its options, for the plans made before it runs: the stages it reports and
what it holds in memory while it runs. A method's registry entry names both (twossp_core/plan/methods.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twossp_core.plan.shape import ModelShape


@dataclass(frozen=True)
class Stage:
    name: str
    weight: float  # relative share of the run's time (only ratios within one plan matter)


@dataclass(frozen=True)
class MethodMemory:
    """What a method holds while it runs, besides the model and one forward batch through a block; the memory
    plan (twossp_core/plan/memory.py) adds it up. A method declares it with a function of its validated options
    and the job's calibration windows, named by its registry entry."""

    record_windows: int  # windows whose every block input it records at once (BlockRunner: 2SSP stage 2, ...)
    # a copy of the dense blocks: in memory all of them (on the host unless they take at most half of a GPU's free
    # memory; in the one host memory on a CPU), block by block the block at hand, read again from the checkpoint
    dense_blocks: bool = False
    # whether its pruned blocks keep at most 1 - sparsity of their parameters plus one block; False: a heal plans
    # the student at the dense size (twossp_core/plan/heal_memory.py)
    sized_by_sparsity: bool = True
    block_mode_refusal: str | None = None  # why block-by-block execution cannot run it with these options

    def state_bytes(self, shape: ModelShape, item: int, seq_len: int) -> int:
        """Bytes it holds besides the recorded block inputs and the dense blocks (`item`: bytes per value of the
        job's dtype); a method that holds more declares a subclass."""
        return 0


def holds_nothing(config: object, calibration_windows: int) -> MethodMemory:
    """The declaration of a method that holds nothing besides the model and one forward batch."""
    return MethodMemory(record_windows=0)

