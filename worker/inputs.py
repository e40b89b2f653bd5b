"""A job's local inputs, opened first and then checked where they really are.

Checking a path and opening it later leaves a gap in which a link can be swapped in. The worker instead opens
every file of a local model directory and every local data file, checks the real path of what it holds open
(`/proc/self/fd/N`) against the allowed roots, and has the job read its inputs through a private directory of
links to those open files (`/proc/PID/fd/N`, which always reaches the file that was opened and checked): a link
swapped in afterwards is never followed. The zero-shot tasks' local files (where the spec's `task_data()` says,
the worker's settings) are looked up once and opened the same way; the request does not name them, so they are
held to being regular files but not to the allowed roots. The job is handed `pinned.job_spec(spec)`: its model,
data sources and task files say to open those links, while reports keep the names the spec gave and the task
files' paths as found. Needs Linux's /proc.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.paths import ROOTS_RULE, PathRefused, inside
from twossp_core.evaluation.zeroshot.sources import companion_files, found_sources
from twossp_core.plan.spec import JobSpecBase, SpecT
from twossp_core.plan.tasks import TaskData

MAX_FILES = 1024  # open files per job; a model directory with more is refused
MAX_DEPTH = 8
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC  # O_NONBLOCK: a FIFO must not hang us
_ANYWHERE = [Path("/")]  # the roots of files the request does not name (the task files of the worker's settings)


class _Unopenable(Exception):
    """An entry of a model directory that cannot be opened (a dangling link, no permission)."""


class PinnedInputs:
    """The open files of one job and the directory of links to them; `opened` maps each local input the spec
    names (and each task file or folder as found) to the path the job reads it from (what `JobSpecBase.with_opened`
    takes); `task_data` is where the job reads its zero-shot tasks, each task's local file looked up once."""

    def __init__(self, directory: Path, roots: list[Path]) -> None:
        self.directory = directory
        self.roots = roots
        self.opened: dict[str, Path] = {}
        self.task_data = TaskData()
        self._fds: list[int] = []
        directory.mkdir(parents=True, exist_ok=True)

    def job_spec(self, spec: SpecT) -> SpecT:
        """`spec` reading exactly the files opened here (its names, and everything it reports, unchanged)."""
        return spec.with_task_data(self.task_data).with_opened(self.opened)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    # -- opening and checking ----------------------------------------------------------------------------------
    def _open(
        self, name: str, dir_fd: int | None, what: str, shown: str, *, directory: bool = False,
        roots: list[Path] | None = None,
    ) -> int:
        """Open `name` (links followed), then refuse it unless what was opened lies inside the roots (`roots`, by
        default the allowed roots)."""
        try:
            fd = os.open(name, _OPEN_FLAGS | (os.O_DIRECTORY if directory else 0), dir_fd=dir_fd)
        except NotADirectoryError:
            raise PathRefused(f"{what}: not a directory") from None
        except OSError as exc:
            if dir_fd is not None:
                raise _Unopenable(name) from None
            raise PathRefused(f"{what}: cannot be opened ({exc.strerror})") from None
        try:
            real = Path(os.readlink(f"/proc/self/fd/{fd}"))
            if not inside(real, self.roots if roots is None else roots):
                raise PathRefused(
                    f"{what}: {ROOTS_RULE}" if shown == "." else f"{what}: {shown} links outside the allowed roots"
                )
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise PathRefused(f"{what}: {shown} is not a regular file")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _keep(self, fd: int, link: Path) -> None:
        if len(self._fds) >= MAX_FILES:
            os.close(fd)
            raise PathRefused(f"more than {MAX_FILES} local input files")
        self._fds.append(fd)
        link.symlink_to(f"/proc/{os.getpid()}/fd/{fd}")

    def add_file(self, value: str, what: str) -> None:
        """A local data file (absolute; the API refused anything else)."""
        if not value.startswith("/") or "\x00" in value:
            raise PathRefused(f"{what}: {ROOTS_RULE}")
        fd = self._open(value, None, what, ".")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise PathRefused(f"{what}: not a regular file")
        slot = self.directory / f"d{len(self.opened)}"
        slot.mkdir()
        link = slot / (Path(value).name or "data")
        self._keep(fd, link)
        self.opened[value] = link

    def add_directory(self, value: str, what: str) -> None:
        """A local model directory: every file in it (hidden entries aside), in a mirror of its layout."""
        if not value.startswith("/") or "\x00" in value:
            raise PathRefused(f"{what}: {ROOTS_RULE}")
        fd = self._open(value, None, what, ".", directory=True)
        target = self.directory / f"m{len(self.opened)}" / (Path(value).name or "model")
        try:
            self._mirror(fd, target, what, Path(), 0)
        finally:
            os.close(fd)
        self.opened[value] = target

    def add_task(self, task: str, found: Path) -> None:
        """A zero-shot task's local file (with the files read beside it) or folder, as found where the worker's
        settings say: opened like the other inputs, regular files only, wherever they lie."""
        if str(found) in self.opened:
            return
        what = f"zero-shot task {task}"
        fd = self._open(str(found), None, what, found.name, roots=_ANYWHERE)
        slot = self.directory / f"t{len(self.opened)}"
        if stat.S_ISDIR(os.fstat(fd).st_mode):  # a folder of files (MMLU's subjects)
            target = slot / (found.name or "task")
            try:
                self._mirror(fd, target, what, Path(), 0, roots=_ANYWHERE)
            finally:
                os.close(fd)
            self.opened[str(found)] = target
            return
        slot.mkdir()
        self._keep_file(fd, slot / found.name, what)
        for path in companion_files(task, found):  # PIQA's labels, read from beside the file
            self._keep_file(self._open(str(path), None, what, path.name, roots=_ANYWHERE), slot / path.name, what)
        self.opened[str(found)] = slot / found.name

    def _keep_file(self, fd: int, link: Path, what: str) -> None:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise PathRefused(f"{what}: {link.name} is not a regular file")
        self._keep(fd, link)

    def _mirror(
        self, dir_fd: int, target: Path, what: str, relative: Path, depth: int, roots: list[Path] | None = None
    ) -> None:
        if depth > MAX_DEPTH:
            raise PathRefused(f"{what}: {relative} is nested more than {MAX_DEPTH} directories deep")
        target.mkdir(parents=True)
        for name in sorted(os.listdir(dir_fd)):
            if name.startswith("."):
                continue
            shown = str(relative / name)
            try:
                fd = self._open(name, dir_fd, what, shown, roots=roots)
            except _Unopenable:
                continue  # a dangling link or an unreadable entry: the job could not read it either
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                try:
                    self._mirror(fd, target / name, what, relative / name, depth + 1, roots)
                finally:
                    os.close(fd)
            else:
                self._keep(fd, target / name)


@contextmanager
def pinned_inputs(spec: JobSpecBase, roots: list[Path], directory: Path) -> Iterator[PinnedInputs]:
    """Open and check the job's local model (a directory or a GGUF file), data files (PathRefused if one is not
    allowed) and zero-shot task files (DataError when the task data is not usable, as a run would raise it); they
    stay open, and readable at the paths in `opened`, until the block ends."""
    pinned = PinnedInputs(directory, roots)
    try:
        model = spec.model
        if Path(model).is_absolute() and os.path.isfile(model):  # a GGUF file (add_file checks what it opens)
            pinned.add_file(model, f"model {model!r}")
        elif Path(model).is_absolute():
            pinned.add_directory(model, f"model {model!r}")
        for source in [*spec.calibration_sources(), *spec.eval_sources(), *spec.heal_sources()]:
            if not source.is_hub and source.name not in pinned.opened:
                pinned.add_file(source.name, f"data source {source.name!r}")
        pinned.task_data = found_sources(spec.tasks, spec.task_data())
        for task, found in pinned.task_data.paths.items():
            pinned.add_task(task, found)
        yield pinned
    finally:
        pinned.close()
