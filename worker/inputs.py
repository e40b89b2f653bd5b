"""A job's local inputs, opened first and then checked where they really are.

Checking a path and opening it later leaves a gap in which a link can be swapped in. The worker instead opens
every file of a local model directory and every local data file, checks the real path of what it holds open
(`/proc/self/fd/N`) against the allowed roots, and has the job read its inputs through a private directory of
links to those open files (`/proc/PID/fd/N`, which always reaches the file that was opened and checked): a link
swapped in afterwards is never followed. The job is handed `spec.with_opened(pinned.opened)`: its model and data
sources say to open those links, while reports keep the names the spec gave. Needs Linux's /proc.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.paths import ROOTS_RULE, PathRefused, inside
from twossp_core.plan.spec import JobSpecBase

MAX_FILES = 1024  # open files per job; a model directory with more is refused
MAX_DEPTH = 8
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC  # O_NONBLOCK: a FIFO must not hang us


class _Unopenable(Exception):
    """An entry of a model directory that cannot be opened (a dangling link, no permission)."""


class PinnedInputs:
    """The open files of one job and the directory of links to them; `opened` maps each local input the spec
    names to the path the job reads it from (what `JobSpecBase.with_opened` takes)."""

    def __init__(self, directory: Path, roots: list[Path]) -> None:
        self.directory = directory
        self.roots = roots
        self.opened: dict[str, Path] = {}
        self._fds: list[int] = []
        directory.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    # -- opening and checking ----------------------------------------------------------------------------------
    def _open(self, name: str, dir_fd: int | None, what: str, shown: str, *, directory: bool = False) -> int:
        """Open `name` (links followed), then refuse it unless what was opened lies inside the roots."""
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
            if not inside(real, self.roots):
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

    def _mirror(self, dir_fd: int, target: Path, what: str, relative: Path, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise PathRefused(f"{what}: {relative} is nested more than {MAX_DEPTH} directories deep")
        target.mkdir(parents=True)
        for name in sorted(os.listdir(dir_fd)):
            if name.startswith("."):
                continue
            shown = str(relative / name)
            try:
                fd = self._open(name, dir_fd, what, shown)
            except _Unopenable:
                continue  # a dangling link or an unreadable entry: the job could not read it either
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                try:
                    self._mirror(fd, target / name, what, relative / name, depth + 1)
                finally:
                    os.close(fd)
            else:
                self._keep(fd, target / name)


@contextmanager
def pinned_inputs(spec: JobSpecBase, roots: list[Path], directory: Path) -> Iterator[PinnedInputs]:
    """Open and check the job's local model (a directory or a GGUF file) and data files (PathRefused if one is not
    allowed); they stay open, and readable at the paths in `opened`, until the block ends."""
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
        yield pinned
    finally:
        pinned.close()
