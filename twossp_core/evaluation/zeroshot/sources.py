"""Where task data is read from: per-task paths, a directory of task folders, or the Hugging Face Hub.

The directory is laid out one folder per task, named as the task (`arc_easy/`, `hellaswag/`, `mmlu/`, ...; the
layout of shared/data/tasks). It is the environment variable TWOSSP_TASK_DATA unless a caller (the CLI's
--task-data, the service's settings) sets it for a run with `using_task_data`. A task with no local files is read
from the Hub through `datasets` when the Hub can be reached.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from twossp_core.errors import DataError
from twossp_core.evaluation.zeroshot.items import TaskItems
from twossp_core.evaluation.zeroshot.registry import reader

ENV_VARIABLE = "TWOSSP_TASK_DATA"


@dataclass(frozen=True)
class TaskData:
    root: Path | None = None  # a directory with one folder per task
    paths: Mapping[str, Path] = field(default_factory=dict)  # task -> its file or folder, before the root


_current: list[TaskData] = []


def current_task_data() -> TaskData:
    if _current:
        return _current[-1]
    env = os.environ.get(ENV_VARIABLE)
    return TaskData(root=Path(env).expanduser() if env else None)


@contextmanager
def using_task_data(data: TaskData) -> Iterator[None]:
    """Read task data from `data` until the block ends (a root of None falls back to TWOSSP_TASK_DATA)."""
    if data.root is None:
        data = TaskData(root=current_task_data().root, paths=data.paths)
    _current.append(data)
    try:
        yield
    finally:
        _current.pop()


def local_source(task: str, data: TaskData) -> Path | None:
    """The local file or folder a task is read from, or None when it has no local data (then the Hub)."""
    module = reader(task)
    given = data.paths.get(task)
    if given is not None:
        if not given.exists():
            raise DataError(f"task {task}: {given} does not exist")
        found = module.local_file(task, given)
        if found is None:
            raise DataError(f"task {task}: no {task} data in {given}")
        return found
    if data.root is not None:
        if not data.root.is_dir():
            raise DataError(f"task data directory {data.root} ({ENV_VARIABLE}) is not a directory")
        folder = data.root / task
        if folder.is_dir():
            found = module.local_file(task, folder)
            if found is None:
                raise DataError(f"task {task}: {folder} holds none of the files it is read from")
            return found
    return None


def check_sources(tasks: list[str], data: TaskData | None = None) -> dict[str, str]:
    """Where each task will be read from (a path, or `hub`), before any model is loaded: a task with no local
    data on a machine without the Hub fails here, naming what to set."""
    data = data or current_task_data()
    where = {}
    for task in tasks:
        found = local_source(task, data)
        where[task] = str(found) if found is not None else "hub"
    hub = [t for t, w in where.items() if w == "hub"]
    if hub:
        from twossp_core.runtime.hub import hub_unreachable, offline_mode

        reason = None if offline_mode() else hub_unreachable()
        if reason is not None:
            raise DataError(
                f"zero-shot task {', '.join(hub)}: no local data ({ENV_VARIABLE} or --task-data DIR with one folder "
                f"per task, or --task-file TASK=PATH) and the Hugging Face Hub cannot be reached ({reason})"
            )
    return where


def load_task(task: str, limit: int | None, data: TaskData | None = None) -> TaskItems:
    data = data or current_task_data()
    module = reader(task)
    found = local_source(task, data)
    return module.read_local(task, found, limit) if found is not None else module.read_hub(task, limit)
