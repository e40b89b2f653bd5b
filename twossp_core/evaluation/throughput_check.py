"""Whether a dense-against-pruned throughput comparison can be read as a result (torch-free: the CLI summary,
the report and the sweep comparison use it).

A pass's rate on a shared machine depends on what else runs: when one side's fastest pass is more than
MAX_SPREAD times its slowest, or one side has fewer than MIN_BALANCE times the other's passes (the dense model
measured alone before pruning, the pruned one later under another load), the ratio of the medians says more about
the machine than about the models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_SPREAD = 1.5  # a side's fastest pass / its slowest
MIN_BALANCE = 0.5  # fewest passes / most passes


def unreliable_reasons(spread: Mapping[str, Mapping[str, Any] | None] | None) -> list[str]:
    """Why the comparison in `spread` ({"dense": {"median", "min", "max", "runs"}, "pruned": {...}}, the report's
    `throughput_spread`) is not reliable; empty when it is (or when there is nothing to compare)."""
    sides = {name: stats for name, stats in (spread or {}).items() if stats}
    if len(sides) < 2:
        return []
    reasons = []
    for name, stats in sides.items():
        if stats["min"] > 0 and stats["max"] / stats["min"] > MAX_SPREAD:
            reasons.append(f"{name} passes vary {stats['max'] / stats['min']:.2f}x from slowest to fastest "
                           f"(more than {MAX_SPREAD:g}x: passes too short to time steadily, or a load that changed)")
    runs = {name: int(stats["runs"]) for name, stats in sides.items()}
    if min(runs.values()) < MIN_BALANCE * max(runs.values()):
        counts = ", ".join(f"{name} {count}" for name, count in runs.items())
        reasons.append(f"unbalanced runs ({counts}): the sides were timed apart, under different loads")
    return reasons
