"""The zero-shot tasks by name (torch-free: the request schema validates task names with it)."""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from twossp_core.errors import InvalidSpec

# the paper's six, in the order its tables list them
PAPER_TASKS = ("winogrande", "arc_easy", "arc_challenge", "hellaswag", "piqa", "mmlu")
PAPER = "paper"
# task name -> the module that reads it (local_file, read_local, read_hub)
READERS = {
    "winogrande": "winogrande", "arc_easy": "arc", "arc_challenge": "arc", "hellaswag": "hellaswag", "piqa": "piqa",
    "mmlu": "mmlu",
}
TASK_NAMES = tuple(READERS)


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
            if task not in READERS:
                raise InvalidSpec(f"unknown zero-shot task {name!r}: the tasks are {', '.join(TASK_NAMES)} "
                                  f"(or '{PAPER}' for all six)")
            if task not in names:
                names.append(task)
    return names


def reader(task: str) -> ModuleType:
    return import_module(f"twossp_core.evaluation.zeroshot.{READERS[task]}")
