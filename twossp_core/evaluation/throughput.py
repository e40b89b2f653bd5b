"""Forward throughput (tokens/s) of the full model, logits included, on a fixed input."""

from __future__ import annotations

import time

import torch

from twossp_core.models.base import ModelAdapter
from twossp_core.runtime.forward import decoder_output


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def forward_throughput(
    adapter: ModelAdapter, input_ids: torch.Tensor, *, min_seconds: float = 1.0, min_runs: int = 3
) -> float:
    """Median-free simple estimate: total tokens / total time over at least min_runs timed passes."""

    def once() -> None:
        adapter.head(decoder_output(adapter, input_ids))

    once()  # warm-up
    _sync(input_ids.device)
    runs, start = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < min_seconds:
        once()
        runs += 1
    _sync(input_ids.device)
    elapsed = time.perf_counter() - start
    return runs * input_ids.numel() / elapsed
