"""Accuracies from per-request log-likelihoods, as lm-eval-harness 0.4 computes them (torch-free).

acc: the choice with the highest log-likelihood (the first on ties) is the gold one. acc_norm: the same with each
log-likelihood divided by the length of its choice in characters (lm-eval's `completion_len`). Each is the mean
over items, with lm-eval's standard error of the mean, sqrt(p (1 - p) / (n - 1)) for 0/1 scores (None for one
item). MMLU's accuracy is over all its items (lm-eval's size-weighted mean over subjects); its standard error here
is the same binomial one over all items, where lm-eval pools per-subject variances (they agree to about 1 %).

Each metric also keeps which items were right (`acc_per_item`: "1" or "0" per item, in item order), so two models
scored on the same items are compared item by item: the paired difference of their accuracies and its standard
error (the standard error of the mean of the per-item differences), which is smaller than the two binomial ones
combined when the models agree on most items.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

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
) -> dict[str, float | str | None]:
    """{"acc", "acc_stderr", "acc_per_item"[, "acc_norm", "acc_norm_stderr", "acc_norm_per_item"]} over the items."""
    n = len(items)
    hits: dict[str, list[bool]] = {"acc": [], "acc_norm": []}
    for item, values in zip(items, lls, strict=True):
        best, best_norm = predictions(item, values)
        hits["acc"].append(best == item.gold)
        hits["acc_norm"].append(best_norm == item.gold)
    out: dict[str, float | str | None] = {}
    for metric in metrics:
        p = sum(hits[metric]) / n
        out[metric] = p
        out[f"{metric}_stderr"] = stderr(p, n)
        out[f"{metric}_per_item"] = "".join("1" if hit else "0" for hit in hits[metric])
    return out


def paired_difference(base: str, other: str) -> tuple[float, float | None]:
    """(mean of other − base over the items, its standard error) from two `*_per_item` strings of the same items:
    the sample standard deviation of the per-item differences over sqrt(n), as lm-eval's standard error of a mean."""
    if len(base) != len(other) or not base:
        raise ValueError("paired scores need the same items")
    diffs = [int(b) - int(a) for a, b in zip(base, other, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return mean, None
    variance = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return mean, math.sqrt(variance / n)


def with_paired_differences(dense: dict[str, Any], scores: dict[str, Any], metrics: Sequence[str]) -> dict[str, Any]:
    """`scores` plus, for every metric both have per item, `<metric>_delta` (scores − dense) and its paired
    standard error `<metric>_delta_stderr`."""
    out = dict(scores)
    for metric in metrics:
        base, other = dense.get(f"{metric}_per_item"), scores.get(f"{metric}_per_item")
        if isinstance(base, str) and isinstance(other, str) and len(base) == len(other) and base:
            out[f"{metric}_delta"], out[f"{metric}_delta_stderr"] = paired_difference(base, other)
    return out
