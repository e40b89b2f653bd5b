"""Stage 2 (depth): greedily remove the attention modules whose removal raises perplexity least.

Each round tries every remaining attention module on the calibration window(s) and removes the best
(ties → lowest block index). Both modes compute the same numbers, so they take the same decisions:

- "naive" reruns the whole model for every candidate (the reference);
- "fast" never recomputes what a candidate cannot change:
  * the hidden state entering block i does not depend on removals at or after i, so it is recorded once per
    window and a candidate i runs only blocks i..B from it; after a round removes attention k, only the
    recorded inputs of blocks after k are recomputed (from block k);
  * candidates are tried from the last block down, so the best block so far, b, is known before every earlier
    candidate j < b runs; j keeps the state entering b from its own run. If b wins the round, that state is
    still exact next round (blocks j+1..b-1 and the input of j are unchanged), so j then starts at block b
    instead of j. At most one such state per candidate and window is held;
  * a candidate stops as soon as its partial NLL (a sum of non-negative terms, accumulated in the same order as
    the naive sum) already loses to the best complete score. Skipped work only ever belongs to a candidate that
    could not have been chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from twossp_core.models.base import ModelAdapter
from twossp_core.progress import Reporter
from twossp_core.runtime.forward import BlockInputs, BlockRunner, block_output, nll_sum_until, window_nll

STAGE = "stage2"


@dataclass(frozen=True)
class Removal:
    block: int
    perplexity: float  # calibration perplexity right after this removal


def _rank(score: float, idx: int) -> tuple[bool, float, int]:
    """A total order on (score, block): lower score first, NaN last, equal scores → lower block index first."""
    nan = math.isnan(score)
    return nan, 0.0 if nan else score, idx


def _beats(score: float, idx: int, best: tuple[float, int] | None) -> bool:
    """Whether candidate idx ranks before the best so far: the winner never depends on the trial order."""
    return best is None or _rank(score, idx) < _rank(*best)


@torch.no_grad()
def greedy_attention_removal(
    adapter: ModelAdapter,
    windows: torch.Tensor,
    count: int,
    *,
    mode: Literal["fast", "naive"] = "fast",
    reporter: Reporter | None = None,
) -> list[Removal]:
    reporter = reporter or Reporter()
    with torch.inference_mode():
        if mode == "naive":
            return _naive(adapter, windows, count, reporter)
        return _fast(adapter, windows, count, reporter)


def _naive(adapter: ModelAdapter, windows: torch.Tensor, count: int, reporter: Reporter) -> list[Removal]:
    removals: list[Removal] = []
    total_trials = sum(adapter.num_blocks - len(adapter.removed_attention) - r for r in range(count))
    done = 0
    for _ in range(count):
        candidates = [i for i in range(adapter.num_blocks) if not adapter.attention_removed(i)]
        best: tuple[float, int] | None = None
        for idx in candidates:
            reporter.checkpoint()
            nll, tokens = 0.0, 0
            with adapter.bypassed("attention", idx):
                for window in windows:
                    s, n = window_nll(adapter, window.unsqueeze(0))
                    nll, tokens = nll + s, tokens + n
            score = nll / tokens
            if _beats(score, idx, best):
                best = (score, idx)
            done += 1
            reporter.update(STAGE, done / max(total_trials, 1))
        assert best is not None
        adapter.remove_attention(best[1])
        removals.append(Removal(block=best[1], perplexity=math.exp(best[0])))
    reporter.update(STAGE, 1.0)
    return removals


@dataclass
class _Entry:
    """The state entering block `block` (one per window) of a run with candidate j's attention bypassed."""

    block: int
    states: list[torch.Tensor]


def _try_candidate(
    adapter: ModelAdapter,
    records: list[BlockInputs],
    idx: int,
    entry: _Entry | None,
    keep_at: int | None,
    tokens: int,
    best: tuple[float, int] | None,
) -> tuple[float | None, _Entry | None]:
    """Candidate idx's score (None once it provably loses to `best`) and its state entering block `keep_at`.

    The NLL is accumulated exactly as the naive mode does (windows in order, LM-head chunks in order), so a
    complete score is bit-identical to the naive one.
    """

    def loses(total: float) -> bool:
        return best is not None and not _beats(total / tokens, idx, best)

    start = entry.block if entry is not None else idx
    kept: list[torch.Tensor] = []
    nll = 0.0
    complete = True
    with adapter.bypassed("attention", idx):
        for w, record in enumerate(records):
            hidden = entry.states[w] if entry is not None else record.hidden[idx]
            for block in range(start, adapter.num_blocks):
                if block == keep_at:
                    kept.append(hidden)
                    if not complete:
                        break
                hidden = block_output(adapter.layers[block](hidden, *record.args[block], **record.kwargs[block]))
            if not complete:
                continue  # this candidate already lost; only the state to keep is still wanted
            normed = adapter.final_norm(hidden)
            before = nll
            s, _, complete = nll_sum_until(adapter, normed, record.input_ids, lambda p, b=before: loses(b + p))
            nll += s
            if complete and w + 1 < len(records) and loses(nll):
                complete = False
            if not complete and keep_at is None:
                break
    keep = _Entry(keep_at, kept) if keep_at is not None and len(kept) == len(records) else None
    return (nll / tokens if complete else None), keep


def _refresh_record(adapter: ModelAdapter, record: BlockInputs, removed: int) -> None:
    """Recompute the inputs of the blocks after `removed` under the current structure."""
    hidden = record.hidden[removed]
    for block in range(removed, adapter.num_blocks - 1):
        hidden = block_output(adapter.layers[block](hidden, *record.args[block], **record.kwargs[block]))
        record.hidden[block + 1] = hidden


def _fast(adapter: ModelAdapter, windows: torch.Tensor, count: int, reporter: Reporter) -> list[Removal]:
    runner = BlockRunner(adapter)
    removals: list[Removal] = []
    total_trials = sum(adapter.num_blocks - len(adapter.removed_attention) - r for r in range(count))
    done = 0
    records: list[BlockInputs] = [runner.capture(w.unsqueeze(0)) for w in windows] if count else []
    tokens = sum(int(w.shape[0]) - 1 for w in windows)  # every candidate predicts the same tokens
    entries: dict[int, _Entry] = {}  # candidate → reusable state from the previous round
    for round_idx in range(count):
        candidates = sorted((i for i in range(adapter.num_blocks) if not adapter.attention_removed(i)), reverse=True)
        best: tuple[float, int] | None = None
        for idx in candidates:
            reporter.checkpoint()
            entry = entries.pop(idx, None)
            start = entry.block if entry is not None else idx
            keep_at = best[1] if best is not None and best[1] >= start and best[1] > idx else None
            score, kept = _try_candidate(adapter, records, idx, entry, keep_at, tokens, best)
            del entry
            if kept is not None:
                entries[idx] = kept
            if score is not None and _beats(score, idx, best):
                best = (score, idx)
                # candidates after idx cannot reuse anything once a block before them is removed
                entries = {i: e for i, e in entries.items() if i < idx}
            done += 1
            reporter.update(STAGE, done / max(total_trials, 1))
        assert best is not None
        k = best[1]
        adapter.remove_attention(k)
        entries = {i: e for i, e in entries.items() if i < k and e.block == k}
        if round_idx + 1 < count:
            for record in records:
                _refresh_record(adapter, record, k)
        removals.append(Removal(block=k, perplexity=math.exp(best[0])))
    reporter.update(STAGE, 1.0)
    return removals
