"""Forward throughput (tokens/s) of full models, logits included, on one fixed input.

Every model first runs WARMUP_RUNS untimed passes; then the models take timed passes in turn (dense, pruned,
dense, …) until each has at least `min_runs` passes and `min_seconds` of timed work, so a change of machine load
hits them alike. A single timing is noisy on a shared machine: the result is the median of the per-pass rates,
with the slowest and fastest pass as its spread. A comparison whose spread or balance of runs shows the load
changed is reported as not reliable, with the reasons (evaluation.throughput_check).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from twossp_core.models.base import ModelAdapter
from twossp_core.runtime.forward import decoder_output

WARMUP_RUNS = 2
MIN_RUNS = 5
MIN_SECONDS = 1.0
MAX_RUNS = 200


@dataclass(frozen=True)
class Throughput:
    median: float  # tokens/s
    low: float  # the slowest pass
    high: float  # the fastest pass
    runs: int

    def as_dict(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.low, "max": self.high, "runs": self.runs}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_throughput(
    adapters: dict[str, ModelAdapter],
    input_ids: torch.Tensor,
    *,
    min_runs: int = MIN_RUNS,
    min_seconds: float = MIN_SECONDS,
    checkpoint: Callable[[], None] | None = None,
) -> dict[str, Throughput]:
    """Throughput of each named model on `input_ids`; `checkpoint` is called between passes (it may raise to
    stop)."""
    tokens = input_ids.numel()

    def timed(adapter: ModelAdapter) -> float:
        _sync(input_ids.device)
        start = time.perf_counter()
        logits = adapter.head(decoder_output(adapter, input_ids))
        _sync(input_ids.device)
        _sync(logits.device)  # multi-device: the last device's work ends after the others' (it waits for their output)
        return time.perf_counter() - start

    for adapter in adapters.values():
        for _ in range(WARMUP_RUNS):
            if checkpoint is not None:
                checkpoint()
            timed(adapter)
    times: dict[str, list[float]] = {name: [] for name in adapters}
    while any(len(t) < MAX_RUNS and (len(t) < min_runs or sum(t) < min_seconds) for t in times.values()):
        for name, adapter in adapters.items():
            if checkpoint is not None:
                checkpoint()
            times[name].append(timed(adapter))
    rates = {name: [tokens / max(t, 1e-9) for t in passes] for name, passes in times.items()}
    return {
        name: Throughput(median=statistics.median(r), low=min(r), high=max(r), runs=len(r)) for name, r in rates.items()
    }


def forward_throughput(
    adapter: ModelAdapter, input_ids: torch.Tensor, *, checkpoint: Callable[[], None] | None = None
) -> Throughput:
    """Throughput of one model (see measure_throughput)."""
    return measure_throughput({"model": adapter}, input_ids, checkpoint=checkpoint)["model"]
