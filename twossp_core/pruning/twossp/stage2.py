"""Stage 2 (depth): greedily remove the attention modules whose removal raises perplexity least.

Each round tries every remaining attention module on the calibration window(s) and removes the best
(ties → lowest block index). Both modes compute the same numbers, so they take the same decisions:

- "naive" reruns the whole model for every candidate (the reference);
- "fast" never recomputes what a candidate cannot change:
  * the hidden state entering block i does not depend on removals at or after i, so it is recorded once and
    a candidate i runs only blocks i..B from it;
  * after a round removes attention k, the recorded inputs of blocks ≤ k are still valid and those of later
    blocks are exactly the states the winning candidate's own run produced, so the record is updated from that
    run instead of recomputing any block;
  * a candidate stops as soon as its partial NLL (a sum of non-negative terms, accumulated in the same order as
    the naive sum) already loses to the best complete score; candidates are tried in the order of the previous
    round's scores so a strong bound is known early. Skipped work only ever belongs to a candidate that could
    not have been chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from twossp_core.models.base import ModelAdapter
from twossp_core.progress import Reporter
from twossp_core.runtime.forward import BlockInputs, BlockRunner, nll_sum_until, window_nll

STAGE = "stage2"


@dataclass(frozen=True)
class Removal:
    block: int
    perplexity: float  # calibration perplexity right after this removal


def _beats(score: float, idx: int, best: tuple[float, int] | None) -> bool:
    """The naive order: lower score wins; on equal scores the lower block index wins."""
    return best is None or score < best[0] or (score == best[0] and idx < best[1])


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


def _try_candidate(
    adapter: ModelAdapter,
    runner: BlockRunner,
    records: list[BlockInputs],
    idx: int,
    tokens: int,
    best: tuple[float, int] | None,
) -> tuple[float | None, list[list[torch.Tensor]]]:
    """Candidate idx's score (None once it provably loses to `best`) and, per window, the states its run produced.

    The NLL is accumulated exactly as the naive mode does (windows in order, LM-head chunks in order), so a
    complete score is bit-identical to the naive one.
    """

    def loses(total: float) -> bool:
        return best is not None and not _beats(total / tokens, idx, best)

    nll = 0.0
    states: list[list[torch.Tensor]] = []
    with adapter.bypassed("attention", idx):
        for w, record in enumerate(records):
            run: list[torch.Tensor] = []
            normed = adapter.final_norm(runner.run_from(record, idx, run))
            states.append(run)
            before = nll
            s, _, complete = nll_sum_until(adapter, normed, record.input_ids, lambda p, b=before: loses(b + p))
            nll += s
            if not complete or (w + 1 < len(records) and loses(nll)):
                return None, []
    return nll / tokens, states


def _fast(adapter: ModelAdapter, windows: torch.Tensor, count: int, reporter: Reporter) -> list[Removal]:
    runner = BlockRunner(adapter)
    removals: list[Removal] = []
    total_trials = sum(adapter.num_blocks - len(adapter.removed_attention) - r for r in range(count))
    done = 0
    records: list[BlockInputs] = [runner.capture(w.unsqueeze(0)) for w in windows] if count else []
    tokens = sum(int(w.shape[0]) - 1 for w in windows)  # every candidate predicts the same tokens
    previous: dict[int, float] = {}
    for _ in range(count):
        candidates = [i for i in range(adapter.num_blocks) if not adapter.attention_removed(i)]
        candidates.sort(key=lambda i: (previous.get(i, math.inf), i))  # likely winners first: tighter bounds
        best: tuple[float, int] | None = None
        best_states: list[list[torch.Tensor]] = []
        scores: dict[int, float] = {}
        for idx in candidates:
            reporter.checkpoint()
            score, states = _try_candidate(adapter, runner, records, idx, tokens, best)
            if score is not None:
                scores[idx] = score
                if _beats(score, idx, best):
                    best, best_states = (score, idx), states
            done += 1
            reporter.update(STAGE, done / max(total_trials, 1))
        assert best is not None
        k = best[1]
        adapter.remove_attention(k)
        for record, run in zip(records, best_states, strict=True):
            record.hidden[k + 1 :] = run  # inputs of blocks after k under the new structure
        previous = scores
        removals.append(Removal(block=k, perplexity=math.exp(best[0])))
    reporter.update(STAGE, 1.0)
    return removals
