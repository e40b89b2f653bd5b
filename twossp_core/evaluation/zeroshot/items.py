"""What a zero-shot task is made of once read: items of (context, continuation) requests, a gold index, and the
strings whose lengths `acc_norm` divides by. Torch-free.

An item follows lm-eval-harness 0.4's `multiple_choice` output type: one request per choice, each scored as the sum
of the continuation's token log-likelihoods given its context; the prediction is the arg-max (the first on ties).
"""

from __future__ import annotations

from dataclasses import dataclass, field

TARGET_DELIMITER = " "  # lm-eval's default target_delimiter, put before every continuation


@dataclass(frozen=True)
class Item:
    """One question: `requests[k]` = (context, continuation) of choice k, `gold` the index of the right one.

    `choices` are the strings lm-eval measures for `acc_norm` (the choice texts, without the delimiter; for
    WinoGrande the option-filled contexts)."""

    requests: tuple[tuple[str, str], ...]
    gold: int
    choices: tuple[str, ...]
    group: str | None = None  # MMLU: the subject (accuracy is pooled over subjects, the limit is per subject)

    def __post_init__(self) -> None:
        if len(self.requests) != len(self.choices) or not 0 <= self.gold < len(self.requests):
            raise ValueError(f"malformed item: {len(self.requests)} requests, {len(self.choices)} choices, "
                             f"gold {self.gold}")


@dataclass
class TaskItems:
    """A task's items as read: where from, whether they are lm-eval's exactly, and which metrics it reports."""

    name: str
    items: list[Item]
    source: str  # the file, directory or Hub dataset read
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    approximate: bool = False  # the items are not exactly lm-eval's (HellaSwag from the text extraction)
    note: str | None = None  # why the items are approximate
    total: int | None = None  # items in the whole split (None: not counted, the reading stopped at the limit)
    groups: list[str] = field(default_factory=list)  # MMLU subjects, in order


def choice_requests(context: str, choices: list[str]) -> tuple[tuple[str, str], ...]:
    """The requests of a task whose choices are continuations of one shared context."""
    return tuple((context, TARGET_DELIMITER + choice) for choice in choices)


def first(items: list[Item], limit: int | None) -> list[Item]:
    return items if limit is None else items[:limit]
