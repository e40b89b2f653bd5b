"""Forward passes over many windows that run block by block instead of window by window.

A whole-model pass per batch reads every block once per batch; on an offloaded model (runtime/offload.py)
that reads the model from disk once per batch. Here every batch's state entering block 0 is captured first,
then block 0 runs on every batch, then block 1, and so on: each block is read once per pass, and the states
wait on the host between blocks. Each batch goes through exactly the computation of a whole-model pass (same
block calls, same arguments, same batch), so the results are bit-identical; a pass holds `chunk_windows`
windows' states at a time and repeats for the next chunk when the budget is smaller than the windows.

The arguments each block receives besides the hidden state (masks, rotary embeddings) do not depend on the
hidden states, so they are recorded by running the decoder once with stand-in layers that pass their input
through: no block is computed (or read) to capture them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from twossp_core.models.base import ModelAdapter
from twossp_core.runtime.forward import StopForward, block_output, nll_sum
from twossp_core.runtime.offload import offloader_of

HOST = torch.device("cpu")


class _Recorder(nn.Module):
    """Stands in for a decoder block: records its call and returns the hidden state unchanged."""

    def __init__(self, sink: list[tuple[torch.Tensor, tuple[Any, ...], dict[str, Any]]]) -> None:
        super().__init__()
        self.sink = sink

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args:
            hidden, rest = args[0], args[1:]
        else:
            kwargs = dict(kwargs)
            hidden, rest = kwargs.pop("hidden_states"), ()
        self.sink.append((hidden, rest, kwargs))
        return hidden


@dataclass
class BatchState:
    """One batch of windows between blocks: its current hidden state (on the host) and every block's arguments."""

    input_ids: torch.Tensor
    hidden: torch.Tensor
    args: list[tuple[Any, ...]]
    kwargs: list[dict[str, Any]]


@torch.no_grad()
def capture_batch(adapter: ModelAdapter, input_ids: torch.Tensor) -> BatchState:
    sink: list[tuple[torch.Tensor, tuple[Any, ...], dict[str, Any]]] = []
    with adapter.layers_replaced(nn.ModuleList([_Recorder(sink) for _ in range(adapter.num_blocks)])):
        adapter.decoder(input_ids=input_ids, use_cache=False)
    if len(sink) != adapter.num_blocks:
        raise RuntimeError(f"captured the arguments of {len(sink)} of {adapter.num_blocks} blocks")
    return BatchState(input_ids, sink[0][0].to(HOST), [s[1] for s in sink], [s[2] for s in sink])


def compute_device(adapter: ModelAdapter) -> torch.device:
    offloader = offloader_of(adapter.model)
    return offloader.device if offloader is not None else next(adapter.model.parameters()).device


def chunks(count: int, batch_size: int, chunk_windows: int | None) -> Iterator[list[tuple[int, int]]]:
    """Batches (start, end) of `batch_size` windows, grouped into chunks of at most `chunk_windows` windows
    (at least one batch)."""
    per_chunk = max(1, (chunk_windows or count) // batch_size)
    batches = [(s, min(s + batch_size, count)) for s in range(0, count, batch_size)]
    for i in range(0, len(batches), per_chunk):
        yield batches[i : i + per_chunk]


@torch.no_grad()
def run_blocks(
    adapter: ModelAdapter, states: list[BatchState], *, last: int | None = None,
    on_block: Callable[[int], None] | None = None,
) -> None:
    """Advance every batch through blocks 0..last (default: all). A block call that raises StopForward ends that
    batch's pass through that block without an output (used once nothing later is wanted)."""
    device = compute_device(adapter)
    last = adapter.num_blocks - 1 if last is None else last
    for idx in range(last + 1):
        layer = adapter.layers[idx]
        for state in states:
            try:
                out = block_output(layer(state.hidden.to(device), *state.args[idx], **state.kwargs[idx]))
            except StopForward:
                continue
            state.hidden = out.to(HOST)
        if on_block is not None:
            on_block(idx)


def window_budget(adapter: ModelAdapter) -> int | None:
    """Windows one pass may hold on the host (set from the memory plan; None: no limit)."""
    offloader = offloader_of(adapter.model)
    return None if offloader is None else offloader.window_budget


@torch.no_grad()
def perplexity_by_block(
    adapter: ModelAdapter, windows: torch.Tensor, *, batch_size: int = 1,
    on_progress: Callable[[float], None] | None = None,
) -> float:
    """The same number as evaluation.perplexity.perplexity (same batches, same sums in the same order)."""
    device = compute_device(adapter)
    n = windows.shape[0]
    groups = list(chunks(n, batch_size, window_budget(adapter)))
    total, count = 0.0, 0
    for g, group in enumerate(groups):
        states = [capture_batch(adapter, windows[s:e].to(device)) for s, e in group]

        def progress(idx: int, g: int = g) -> None:
            if on_progress is not None:
                on_progress((g + (idx + 1) / (adapter.num_blocks + 1)) / len(groups))

        run_blocks(adapter, states, on_block=progress)
        for state in states:
            s, c = nll_sum(adapter, adapter.final_norm(state.hidden.to(device)), state.input_ids)
            total, count = total + s, count + c
        if on_progress is not None:
            on_progress((g + 1) / len(groups))
    return math.exp(total / count)
