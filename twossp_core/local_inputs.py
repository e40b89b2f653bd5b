"""Where local model directories and data files are read from.

A local input is read at the path the spec names, unless the caller redirected that name for the duration of a run:
the service reads a job's inputs through a directory of files it opened and checked beforehand, so a path swapped
after the check is never followed. Reports and labels keep the names the spec gave.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

NAME_MAX = 255  # bytes in one path component (Linux, and most file systems elsewhere)
PATH_MAX = 4096  # bytes in a whole path, its terminating NUL included

_redirects: dict[str, Path] = {}


class UnusablePath(ValueError):
    """A local path that cannot be looked at: the reason is the message (a symlink loop, a name too long, ...)."""


def unusable_reason(name: str) -> str | None:
    """Why `name` can never name a file here, decided without touching the file system; None when it can."""
    if "\x00" in name:
        return "contains a NUL character"
    try:
        raw = os.fsencode(name)
    except UnicodeEncodeError:
        return "is not a valid file name (characters that cannot be encoded)"
    if len(raw) >= PATH_MAX:
        return f"is longer than {PATH_MAX - 1} bytes"
    if any(len(part) > NAME_MAX for part in raw.split(b"/")):
        return f"has a component longer than {NAME_MAX} bytes"
    return None


def stat_path(path: Path | str) -> os.stat_result | None:
    """What is at `path`, links followed; None when nothing is (a dangling link included). UnusablePath with the
    reason when it cannot be looked at: a symlink loop, a name too long, no permission to search a directory."""
    reason = unusable_reason(str(path))
    if reason is not None:
        raise UnusablePath(reason)
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnusablePath("is a symlink loop (or a chain of more than 40 links)") from None
        raise UnusablePath(f"cannot be looked at ({exc.strerror or type(exc).__name__})") from None


def local_path(name: str) -> Path:
    """The path to open for the local input `name` (a model directory or a data file)."""
    target = _redirects.get(name)
    return target if target is not None else Path(name).expanduser()


@contextmanager
def redirected(mapping: Mapping[str, Path]) -> Iterator[None]:
    """Read the inputs named in `mapping` from the paths it gives, until the block ends (one run per process)."""
    previous = dict(_redirects)
    _redirects.update(mapping)
    try:
        yield
    finally:
        _redirects.clear()
        _redirects.update(previous)
