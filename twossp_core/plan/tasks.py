"""The zero-shot tasks a request may name (scored by twossp_core/evaluation/zeroshot)."""

from __future__ import annotations

from twossp_core.errors import InvalidSpec

# the paper's six, in the order its tables list them
PAPER_TASKS = ("winogrande", "arc_easy", "arc_challenge", "hellaswag", "piqa", "mmlu")
PAPER = "paper"
TASK_NAMES = ("winogrande", "arc_easy", "arc_challenge", "hellaswag", "piqa", "mmlu")


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
