"""Where a task is read from: its own file or folder, its folder in a directory of task folders, or the Hugging Face
Hub.

Every function here reads the `TaskData` it is handed (twossp_core/plan/tasks.py; a job's is its spec's
`task_data()`: the CLI's --task-data and --task-file, the service's settings, by default TWOSSP_TASK_DATA). The
directory is laid out one folder per task, named as the task (`arc_easy/`, `hellaswag/`, `mmlu/`, ...; the layout of
shared/data/tasks). A task with no local files is read from the Hub through `datasets` when the Hub can be reached.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from twossp_core.errors import DataError
from twossp_core.evaluation.zeroshot.items import TaskItems
from twossp_core.evaluation.zeroshot.registry import reader
from twossp_core.plan.tasks import ENV_VARIABLE, TaskData

__all__ = ["ENV_VARIABLE", "TaskData", "check_sources", "companion_files", "found_sources", "load_task",
           "local_source"]


def local_source(task: str, data: TaskData) -> Path | None:
    """The local file or folder a task is read from, as `data` names it, or None when it has no local data (then
    the Hub). A task's own path is looked at where the run opens it (`TaskData.open_path`)."""
    module = reader(task)
    given = data.paths.get(task)
    if given is not None:
        where = data.open_path(given)
        if not where.exists():
            raise DataError(f"task {task}: {given} does not exist")
        found = module.local_file(task, where)
        if found is None:
            raise DataError(f"task {task}: no {task} data in {given}")
        return given if found == where else found
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


def found_sources(tasks: list[str], data: TaskData) -> TaskData:
    """The task data of a run reading `tasks` from `data`, each task's local file or folder looked up now and given
    as its own path (a folder that appears in the root later is not read); the tasks without local data are read
    from the Hub."""
    found = {task: local_source(task, data) for task in tasks}
    return TaskData(paths={task: path for task, path in found.items() if path is not None}, opened=data.opened)


def companion_files(task: str, found: Path) -> list[Path]:
    """The files a task reads beside its local file `found` (PIQA: the labels file); none for a folder, which is
    read whole."""
    companions = getattr(reader(task), "companion_files", None)  # only the readers that read more than one file
    if companions is None or found.is_dir():
        return []
    return [path for path in companions(found) if path != found]


def check_sources(tasks: list[str], data: TaskData) -> dict[str, str]:
    """Where each task will be read from (a path, or `hub`), before any model is loaded: a task with no local
    data on a machine without the Hub fails here, naming what to set."""
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


def load_task(task: str, limit: int | None, data: TaskData) -> TaskItems:
    """A task's first `limit` items (all: None) from where `data` says; its `source` names the file as found."""
    module = reader(task)
    found = local_source(task, data)
    if found is None:
        return module.read_hub(task, limit)
    return replace(module.read_local(task, data.open_path(found), limit), source=str(found))
