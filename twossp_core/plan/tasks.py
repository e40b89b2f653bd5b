"""The zero-shot tasks a request may name (scored by twossp_core/evaluation/zeroshot), and where a run reads their
local files from (`TaskData`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from twossp_core.errors import FieldProblem, InvalidSpec

ENV_VARIABLE = "TWOSSP_TASK_DATA"  # the directory of task folders a run reads when it is given none

# the paper's six, in the order its tables list them
PAPER_TASKS = ("winogrande", "arc_easy", "arc_challenge", "hellaswag", "piqa", "mmlu")
PAPER = "paper"
TASK_NAMES = ("winogrande", "arc_easy", "arc_challenge", "hellaswag", "piqa", "mmlu")


@dataclass(frozen=True)
class TaskSize:
    """The split of a task that lm-eval-harness scores, as its data declares it (the task data's SOURCES.md: the same
    split read from local files or from the Hub), in what a job's plan counts (twossp_core/plan/cost.py).

    Tokens are bounded by the text's UTF-8 bytes plus 2 per request (a token spans at least one byte; the BOS and a
    tokenizer's leading space marker add at most 2), measured over the data: `tokens` is the mean over the whole split
    per choice (items x choices x tokens bounds the whole task), `first_tokens` the largest mean per choice over the
    first N items for any N (N x choices x first_tokens bounds the first N items). A task whose limit applies per
    group (MMLU: the first N items of each of its 57 subjects) gives the mean over its groups of each group's
    `first_tokens`, so groups x N x choices x first_tokens bounds the first N of every group."""

    items: int
    choices: int  # requests (choices) per item, at most
    tokens: int
    first_tokens: int
    groups: int = 1

    def planned_tokens(self, limit: int | None) -> int:
        """Tokens through the model to score the task on one model: its first `limit` items (of each group), or
        the whole split."""
        whole = self.items * self.choices * self.tokens
        if limit is None:
            return whole
        return min(whole, self.groups * limit * self.choices * self.first_tokens)


# measured on the task data (../shared/data/tasks; HellaSwag's text extraction, whose items are lm-eval's own)
TASK_SIZES = {
    "winogrande": TaskSize(items=1267, choices=2, tokens=108, first_tokens=110),
    "arc_easy": TaskSize(items=2376, choices=5, tokens=126, first_tokens=133),  # 3 to 5 choices, most 4
    "arc_challenge": TaskSize(items=1172, choices=5, tokens=146, first_tokens=235),
    "hellaswag": TaskSize(items=10042, choices=4, tokens=365, first_tokens=365),
    "piqa": TaskSize(items=1838, choices=2, tokens=156, first_tokens=242),
    "mmlu": TaskSize(items=14042, choices=4, tokens=557, first_tokens=576, groups=57),
}
assert tuple(TASK_SIZES) == TASK_NAMES, "every task declares its size"


@dataclass(frozen=True)
class TaskData:
    """Where a run reads its zero-shot tasks: a task's own file or folder (`paths`), else its folder in a directory
    with one folder per task (`root`: `arc_easy/`, `hellaswag/`, `mmlu/`, ..., the layout of shared/data/tasks); a
    task with neither is read from the Hugging Face Hub. A run is handed it (the spec's `task_data()`: the CLI's
    --task-data and --task-file, the service's settings; by default TWOSSP_TASK_DATA) and reads nothing else.

    `opened` maps a task's file or folder, as found there, to the path the run opens instead (the service's worker
    opens a job's task files first: worker/inputs.py); what a run reports names the file as found."""

    root: Path | None = None  # a directory with one folder per task
    paths: Mapping[str, Path] = field(default_factory=dict)  # task -> its file or folder, before the root
    opened: Mapping[str, Path] = field(default_factory=dict)  # a task's file or folder -> where the run opens it

    @classmethod
    def from_environment(cls) -> TaskData:
        """The default: the directory TWOSSP_TASK_DATA names, if it is set."""
        value = os.environ.get(ENV_VARIABLE)
        return cls(root=Path(value).expanduser() if value else None)

    def open_path(self, path: Path) -> Path:
        """Where the run opens a task's file or folder `path` (as found): the path `opened` gives it, else itself."""
        return self.opened.get(str(path), path)

    def opened_at(self, opened: Mapping[str, Path]) -> TaskData:
        """The same task data, its files opened at the paths `opened` gives (what `open_path` reads)."""
        return replace(self, opened=dict(opened))


def parse_tasks(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Task names from a comma-separated string or a list; `paper` stands for the paper's six. Order kept,
    duplicates dropped; an unknown name raises InvalidSpec naming the known ones."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else list(value)
    names: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise InvalidSpec(f"a task name must be a string, got {part!r}")
        name = part.strip()
        if not name:
            continue
        expanded = list(PAPER_TASKS) if name == PAPER else [name]
        for task in expanded:
            if task not in TASK_NAMES:
                raise InvalidSpec(f"unknown zero-shot task {name!r}: the tasks are {', '.join(TASK_NAMES)} "
                                  f"(or '{PAPER}' for all six)")
            if task not in names:
                names.append(task)
    return names


def parse_task_limits(parts: list[str] | str | None) -> tuple[int | str | None, dict[str, int | str]]:
    """The command line's and the submit form's spelling of how many items to score: `N` for every task and
    `TASK=N` for one task (`mmlu=5`: the first 5 of each MMLU subject), comma-separated or repeated, e.g.
    `200,mmlu=5`. Returns (task_limit, task_limits) as a request spells them; a figure that is not a whole number is
    kept as written, so the request's validation names its field. InvalidSpec (field `task_limit`) for a malformed
    part or a task named twice."""
    texts = [parts] if isinstance(parts, str) else list(parts or [])
    every: int | str | None = None
    per_task: dict[str, int | str] = {}
    for part in (p.strip() for text in texts for p in text.split(",") if p.strip()):
        name, sep, figure = (piece.strip() for piece in part.partition("="))
        if not sep:
            if every is not None:
                raise _bad_limit(f"two limits for every task ({every} and {part})")
            every = _whole(part)
        elif not name or not figure:
            raise _bad_limit(f"{part!r} is neither N nor TASK=N (e.g. 200 or mmlu=5)")
        elif name in per_task:
            raise _bad_limit(f"two limits for {name}")
        else:
            per_task[name] = _whole(figure)
    return every, per_task


def _whole(text: str) -> int | str:
    """`text` as a whole number when it spells one, else as written (the request's validation then names it)."""
    return int(text) if text.lstrip("-").isdigit() else text


def _bad_limit(reason: str) -> InvalidSpec:
    return InvalidSpec(f"task_limit: {reason}", parts=[FieldProblem("task_limit", f"task_limit: {reason}", reason)])
