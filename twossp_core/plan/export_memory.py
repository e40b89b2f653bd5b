"""What `twossp export` holds at its peak, from a saved directory's safetensors headers (torch-free)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from twossp_core.errors import InvalidSpec
from twossp_core.plan.memory import LOAD_FACTOR
from twossp_core.plan.sizes import format_size

EXPORT_MODES = ("auto", "in-memory", "block-by-block")


class StoredTensor(Protocol):
    """Where a tensor's bytes lie in its safetensors file (runtime.tensor_files.TensorEntry)."""

    start: int
    end: int


@dataclass(frozen=True)
class ExportPlan:
    """What exporting a saved model directory holds at its peak, from its safetensors headers."""

    weights: int  # every tensor's bytes
    largest_block: int  # the largest decoder block's bytes
    resident: int  # the tensors outside the blocks (embeddings, final norm, LM head)
    baseline: int  # this process before the model: interpreter, torch, transformers
    held_blocks: int = 1  # the writer's own copies of a block (ExportFormat.held_blocks of the format written)

    @property
    def in_memory(self) -> int:
        """Loading the model whole: the file's pages and the copied tensors (plan.memory.LOAD_FACTOR)."""
        return self.baseline + LOAD_FACTOR * self.weights

    @property
    def block_by_block(self) -> int:
        """The resident tensors and the blocks: the one being written, the next one read, the writer's copies."""
        return self.baseline + self.resident + (2 + self.held_blocks) * self.largest_block

    def describe(self, mode: str) -> str:
        return (f"export memory plan ({mode}): weights {format_size(self.weights)}, one block "
                f"{format_size(self.largest_block)}, baseline {format_size(self.baseline)}; peak in memory "
                f"{format_size(self.in_memory)}, block by block {format_size(self.block_by_block)}")

    def choose(self, execution: str, budget: int | None) -> str:
        """`execution`, or (auto) in memory unless that does not fit the budget; InvalidSpec when the chosen mode
        does not fit it."""
        if execution == "auto":
            execution = "in-memory" if budget is None or self.in_memory <= budget else "block-by-block"
        need = self.in_memory if execution == "in-memory" else self.block_by_block
        if budget is not None and need > budget:
            raise InvalidSpec(f"the export does not fit --max-host-memory {format_size(budget)}: "
                              f"{self.describe(execution)}")
        return execution


def export_plan(entries: Mapping[str, StoredTensor], prefix: str, *, baseline: int, held_blocks: int = 1) -> ExportPlan:
    """The plan of a model directory's safetensors index (`index_directory`), whose decoder blocks' tensors are
    named `prefix` + block index + "." (`block_prefix`); `held_blocks`: the format's (ExportFormat.held_blocks)."""
    blocks: dict[str, int] = {}
    weights = 0
    for name, entry in entries.items():
        size = entry.end - entry.start
        weights += size
        if name.startswith(prefix):
            block = name[len(prefix):].partition(".")[0]
            blocks[block] = blocks.get(block, 0) + size
    in_blocks = sum(blocks.values())
    return ExportPlan(weights, max(blocks.values(), default=0), weights - in_blocks, baseline, held_blocks)
