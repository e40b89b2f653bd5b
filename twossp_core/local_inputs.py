"""Where local model directories and data files are read from.

A local input is read at the path the spec names, unless the caller redirected that name for the duration of a run:
the service reads a job's inputs through a directory of files it opened and checked beforehand, so a path swapped
after the check is never followed. Reports and labels keep the names the spec gave.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

_redirects: dict[str, Path] = {}


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
