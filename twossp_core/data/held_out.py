"""Which evaluation sets a method was not fitted on, and the one figure that sums a run up on them.

An evaluation set is, relative to the data a run fitted on (its calibration sources, and a heal's data):
- `overlaps-calibration`: it shares documents with that data (the same file with intersecting document ranges,
  or the same file with no range on either side) — a score on it is not a held-out score;
- `in-domain`: the same source, disjoint documents (C4 rows [1000, 2000) after calibrating on rows [0, 1000);
  a hub dataset's evaluation split after calibrating on its training split);
- `out-of-domain`: any other source (WikiText-2 or PTB after calibrating on C4).

Held-out sets are the in-domain and out-of-domain ones. A run's summary is the geometric mean over its held-out
sets of pruned / dense perplexity (1.0 = no loss; 2.0 = perplexity doubled on average), so one figure compares
methods across sets whose perplexities differ by orders of magnitude. Torch-free.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from twossp_core.plan.sources import DataSource

Domain = Literal["overlaps-calibration", "in-domain", "out-of-domain"]
HELD_OUT: tuple[Domain, ...] = ("in-domain", "out-of-domain")


def _key(source: DataSource) -> str:
    """The source's identity without its range: a hub name, or a local path made absolute (no filesystem access)."""
    if source.is_hub:
        return f"hub:{source.name}"
    return "file:" + os.path.normpath(os.path.abspath(os.path.expanduser(source.name)))


def _overlap(a: DataSource, b: DataSource) -> bool:
    a_start, a_end = a.start or 0, a.end if a.end is not None else math.inf
    b_start, b_end = b.start or 0, b.end if b.end is not None else math.inf
    return a_start < b_end and b_start < a_end


def domain_of(source: DataSource, fitted: Iterable[DataSource]) -> Domain:
    """How `source` relates to the sources a run fitted on."""
    result: Domain = "out-of-domain"
    for other in fitted:
        if _key(other) != _key(source):
            continue
        if source.is_hub:  # a hub dataset's evaluation split never holds its calibration documents
            result = "in-domain"
        elif _overlap(source, other):
            return "overlaps-calibration"
        else:
            result = "in-domain"
    return result


def domains(evals: Sequence[DataSource], fitted: Sequence[DataSource]) -> dict[str, Domain]:
    """Each evaluation set's domain, by its label."""
    return {source.label: domain_of(source, fitted) for source in evals}


def geometric_mean_ratio(pairs: Iterable[tuple[float, float]]) -> float | None:
    """The geometric mean of after / before over (before, after) pairs; None without a finite pair."""
    logs = [math.log(after / before) for before, after in pairs
            if before and after and math.isfinite(before) and math.isfinite(after) and before > 0 and after > 0]
    return math.exp(sum(logs) / len(logs)) if logs else None


def held_out_summary(perplexity: Sequence[dict[str, Any]], *, key: str = "pruned",
                     reference: str = "dense") -> dict[str, Any] | None:
    """The report's `held_out` block from its perplexity entries (each with `domain`): the held-out sets and the
    geometric mean of `key` / `reference` perplexity over them; None when no set is held out."""
    held = [row for row in perplexity if row.get("domain") in HELD_OUT and key in row and reference in row]
    if not held:
        return None
    ratio = geometric_mean_ratio((row[reference], row[key]) for row in held)
    return {"datasets": [row["dataset"] for row in held], "ratio": ratio}
