"""Stage 2 (depth): greedily remove the attention modules whose removal raises perplexity least.

Each round tries every remaining attention module on the calibration window(s) and removes the best
(ties → lowest block index). "fast" mode reuses the hidden states entering each block (they do not depend
on what is removed at or after it) and runs only blocks i..B per candidate; "naive" reruns the whole model.
Both compute the same numbers, so they take the same decisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from twossp_core.models.base import ModelAdapter
from twossp_core.progress import Reporter
from twossp_core.runtime.forward import BlockRunner, window_nll

STAGE = "stage2"


@dataclass(frozen=True)
class Removal:
    block: int
    perplexity: float  # calibration perplexity right after this removal


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
    runner = BlockRunner(adapter)
    removals: list[Removal] = []
    total_trials = sum(adapter.num_blocks - len(adapter.removed_attention) - r for r in range(count))
    done = 0
    for _ in range(count):
        candidates = [i for i in range(adapter.num_blocks) if not adapter.attention_removed(i)]
        records = [runner.capture(w.unsqueeze(0)) for w in windows] if mode == "fast" else []
        best: tuple[float, int] | None = None
        for idx in candidates:
            reporter.checkpoint()
            nll, tokens = 0.0, 0
            with adapter.bypassed("attention", idx):
                for w_i, window in enumerate(windows):
                    if mode == "fast":
                        s, n = runner.nll_from(records[w_i], idx)
                    else:
                        s, n = window_nll(adapter, window.unsqueeze(0))
                    nll, tokens = nll + s, tokens + n
            score = nll / tokens
            if best is None or score < best[0]:
                best = (score, idx)
            done += 1
            reporter.update(STAGE, done / max(total_trials, 1))
        assert best is not None
        adapter.remove_attention(best[1])
        removals.append(Removal(block=best[1], perplexity=math.exp(best[0])))
    reporter.update(STAGE, 1.0)
    return removals
