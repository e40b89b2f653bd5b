"""Which module reads each zero-shot task (the task names: twossp_core/plan/tasks.py)."""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from twossp_core.plan.tasks import TASK_NAMES

# task name -> the module that reads it (local_file, read_local, read_hub; companion_files where a local file is
# read with others beside it)
READERS = {
    "winogrande": "winogrande", "arc_easy": "arc", "arc_challenge": "arc", "hellaswag": "hellaswag", "piqa": "piqa",
    "mmlu": "mmlu",
}
assert tuple(READERS) == TASK_NAMES, "every task has a reader"


def reader(task: str) -> ModuleType:
    return import_module(f"twossp_core.evaluation.zeroshot.{READERS[task]}")
