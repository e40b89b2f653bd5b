"""Checks of the local paths a request names (model directories, data files): whether a name can name a file at
all, and what is at a path.

Where a job opens each input is said by the input itself (twossp_core/plan/sources.py: `DataSource.open_path`,
`ModelInput.open_path`, as a spec hands them out, with the paths `with_opened` gave it).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

NAME_MAX = 255  # bytes in one path component (Linux, and most file systems elsewhere)
PATH_MAX = 4096  # bytes in a whole path, its terminating NUL included


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
