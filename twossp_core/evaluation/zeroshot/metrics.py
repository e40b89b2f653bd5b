"""Accuracies from per-request log-likelihoods, as lm-eval-harness 0.4 computes them (torch-free).

acc: the choice with the highest log-likelihood (the first on ties) is the gold one. acc_norm: the same with each
log-likelihood divided by the length of its choice in characters (lm-eval's `completion_len`). Each is the mean
over items, with lm-eval's standard error of the mean, sqrt(p (1 - p) / (n - 1)) for 0/1 scores (None for one
item). MMLU's accuracy is over all its items (lm-eval's size-weighted mean over subjects); its standard error here
is the same binomial one over all items, where lm-eval pools per-subject variances (they agree to about 1 %).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from twossp_core.evaluation.zeroshot.items import Item


def predictions(item: Item, lls: Sequence[float]) -> tuple[int, int]:
    """(arg-max of the log-likelihoods, arg-max of the length-normalised ones)."""
    best = max(range(len(lls)), key=lambda k: (lls[k], -k))
    norm = [ll / len(choice) for ll, choice in zip(lls, item.choices, strict=True)]
    best_norm = max(range(len(norm)), key=lambda k: (norm[k], -k))
    return best, best_norm


def stderr(p: float, n: int) -> float | None:
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None


def accuracies(
    items: Sequence[Item], lls: Sequence[Sequence[float]], metrics: Sequence[str]
) -> dict[str, float | None]:
    """{"acc", "acc_stderr"[, "acc_norm", "acc_norm_stderr"]} over the items."""
    n = len(items)
    hits = {"acc": 0, "acc_norm": 0}
    for item, values in zip(items, lls, strict=True):
        best, best_norm = predictions(item, values)
        hits["acc"] += best == item.gold
        hits["acc_norm"] += best_norm == item.gold
    out: dict[str, float | None] = {}
    for metric in metrics:
        p = hits[metric] / n
        out[metric] = p
        out[f"{metric}_stderr"] = stderr(p, n)
    return out
