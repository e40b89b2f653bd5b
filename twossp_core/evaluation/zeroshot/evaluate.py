"""Zero-shot accuracy of a model on the tasks of a run: read and tokenize the items once, score any number of models
(dense, pruned, healed) on the same items, and build the report's `zero_shot` block."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twossp_core.evaluation.zeroshot.items import TaskItems
from twossp_core.evaluation.zeroshot.metrics import accuracies, with_paired_differences
from twossp_core.evaluation.zeroshot.scoring import Encoder, Segment, item_segments, loglikelihoods, max_length
from twossp_core.evaluation.zeroshot.sources import load_task
from twossp_core.models.base import ModelAdapter
from twossp_core.plan.tasks import TaskData

SUBSET = "first N items per task in file order (per subject for MMLU, as lm-eval's --limit)"


@dataclass
class PreparedTask:
    task: TaskItems
    segments: list[Segment]
    limit: int | None = None  # the first `limit` items (of each MMLU subject) were read; None: all


def prepare_tasks(tokenizer: Any, config: Any, limits: Mapping[str, int | None], data: TaskData) -> list[PreparedTask]:
    """Read every task of `limits` (its first `limits[task]` items; None: all, as the spec's task_limit_map) from
    where `data` says, and tokenize its requests for this tokenizer."""
    encoder = Encoder(tokenizer)
    context = max_length(config, tokenizer)
    prepared = []
    for name, limit in limits.items():
        task = load_task(name, limit, data)
        prepared.append(PreparedTask(task, item_segments(encoder, task.items, context), limit))
    return prepared


def subset_text(limit: int | None, prepared: list[PreparedTask]) -> str:
    """Which items were scored, in words: `limit` for every task, then each task scored to another limit."""
    text = SUBSET.replace("N", str(limit)) if limit is not None else "all items"
    others = [f"{p.task.name}: {'all items' if p.limit is None else f'first {p.limit}'}" for p in prepared
              if p.limit != limit]
    return f"{text}; {', '.join(others)}" if others else text


def loglikelihoods_per_task(
    adapter: ModelAdapter, prepared: list[PreparedTask], *, on_progress: Callable[[float], None] | None = None,
    **options: Any,
) -> list[list[list[float]]]:
    """The log-likelihood of every request of every task (tasks packed together), per task, per item."""
    segments = [s for p in prepared for s in p.segments]
    total = max(len(segments), 1)

    def on_batch(done: int) -> None:
        if on_progress is not None:
            on_progress(done / total)

    values = loglikelihoods(adapter, segments, on_batch=on_batch, **options)
    out, at = [], 0
    for p in prepared:
        out.append(values[at : at + len(p.segments)])
        at += len(p.segments)
    return out


def score_tasks(
    adapter: ModelAdapter, prepared: list[PreparedTask], *, on_progress: Callable[[float], None] | None = None
) -> dict[str, dict[str, Any]]:
    """Per task, the accuracies of the model (acc[, acc_norm] and their standard errors)."""
    lls = loglikelihoods_per_task(adapter, prepared, on_progress=on_progress)
    return {p.task.name: accuracies(p.task.items, values, p.task.metrics) for p, values in zip(prepared, lls,
                                                                                               strict=True)}


def zero_shot_report(
    prepared: list[PreparedTask], limit: int | None, scores: dict[str, dict[str, dict[str, Any]]]
) -> dict[str, Any]:
    """The report's `zero_shot` block. `limit`: the request's task_limit (each task's own is in its entry);
    `scores` maps a model label (dense, pruned, healed) to score_tasks()."""
    tasks: dict[str, Any] = {}
    for p in prepared:
        t = p.task
        entry: dict[str, Any] = {"n": len(t.items), "total": t.total, "limit": p.limit, "metrics": list(t.metrics),
                                 "approximate": t.approximate, "source": t.source}
        if t.note:
            entry["note"] = t.note
        for label in sorted(scores, key=lambda name: name != "dense"):  # the dense model first: the others pair with it
            _set_scores(entry, label, scores[label][t.name])
        tasks[t.name] = entry
    average = {label: sum(per_task[p.task.name]["acc"] or 0.0 for p in prepared) / len(prepared)
               for label, per_task in scores.items()} if prepared else {}
    return {
        "limit": limit,
        "subset": subset_text(limit, prepared),
        "tasks": tasks,
        "average_acc": average,
        "approximate": any(p.task.approximate for p in prepared),
    }


def score_model(model: Any, prepared: list[PreparedTask], reporter: Any, stage: str) -> dict[str, dict[str, Any]]:
    """score_tasks on a model, reporting `stage` progress and stopping at a cancel between forward passes."""
    from twossp_core.models.registry import adapter_for

    def progress(fraction: float) -> None:
        reporter.update(stage, fraction)
        reporter.checkpoint()

    reporter.update(stage, 0.0)
    scores = score_tasks(adapter_for(model), prepared, on_progress=progress)
    reporter.update(stage, 1.0)
    return scores


def add_scores(block: dict[str, Any], label: str, scores: dict[str, dict[str, Any]]) -> None:
    """Add a model's scores (e.g. healed) to an existing `zero_shot` block."""
    for name, entry in block["tasks"].items():
        _set_scores(entry, label, scores[name])
    block["average_acc"][label] = sum(scores[name]["acc"] or 0.0 for name in block["tasks"]) / len(block["tasks"])


def _set_scores(entry: dict[str, Any], label: str, scores: dict[str, Any]) -> None:
    """A model's scores on a task's entry; a model other than the dense one with its paired difference from it."""
    dense = entry.get("dense")
    entry[label] = scores if label == "dense" or dense is None else with_paired_differences(dense, scores,
                                                                                            entry["metrics"])
