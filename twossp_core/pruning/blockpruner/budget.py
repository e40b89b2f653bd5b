"""When a submodule-removal method has reached its parameter target (pure arithmetic)."""

from __future__ import annotations


def target_params(sparsity: float, block_params: int) -> int:
    return round(sparsity * block_params)


def keep_removing(removed: int, target: int, smallest_candidate: int | None) -> bool:
    """Continue while the parameters still to remove exceed half of the smallest remaining submodule, i.e.
    stop at the count nearest to the target that the smallest step can reach."""
    if smallest_candidate is None:
        return False
    return target - removed > smallest_candidate / 2
