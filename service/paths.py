"""Local paths a job may read: absolute, and (every symlink resolved) inside the allowed roots.

The API checks a request's paths before queueing; the worker opens the files and then checks what it opened
(worker/inputs.py), since they may have changed in between."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

from twossp_core.local_inputs import UnusablePath, stat_path, unusable_reason

ROOTS_RULE = "local paths must be absolute and inside TWOSSP_ALLOWED_LOCAL_ROOTS"
MAX_ENTRIES = 100_000  # a model directory with more entries than this is refused rather than walked forever


class PathRefused(ValueError):
    """A path outside the allowed roots, relative, unusable (a symlink loop, a name too long, a NUL), of the wrong
    kind (a FIFO where a file is expected), or a directory holding a link that leads outside the roots."""


def inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def real_path(value: str) -> Path | None:
    """`value` with every symlink and `..` resolved (a link that cannot be resolved, e.g. a loop, is left as it
    is), or None when it cannot be resolved at all."""
    try:
        return Path(os.path.realpath(value))
    except (OSError, RuntimeError, ValueError):
        return None


def resolve_allowed(value: str, roots: list[Path], what: str, kind: Literal["model directory", "file"]) -> Path:
    """The real path of `value` (absolute, symlinks and `..` resolved) if it lies inside a root and is a readable
    `kind` (a regular file, or a directory); PathRefused with the reason otherwise. Nothing outside the roots is
    looked at beyond resolving the links that lead there, so the answer says nothing about what lies outside."""
    if not roots:
        raise PathRefused(f"{what} {value!r}: local paths are not accepted (TWOSSP_ALLOWED_LOCAL_ROOTS is empty)")
    if not value.startswith("/"):
        raise PathRefused(f"{what} {value!r}: {ROOTS_RULE}")
    reason = unusable_reason(value)
    if reason is not None:
        raise PathRefused(f"{what} {value!r}: {reason}")
    real = real_path(value)
    if real is None or not inside(real, roots):
        raise PathRefused(f"{what} {value!r}: {ROOTS_RULE}")
    try:
        found = stat_path(real)
    except UnusablePath as exc:
        raise PathRefused(f"{what} {value!r}: {exc}") from None
    if found is None:
        raise PathRefused(f"{what} {value!r}: no such {kind}")
    if kind == "model directory" and not stat.S_ISDIR(found.st_mode):
        raise PathRefused(f"{what} {value!r}: not a directory")
    if kind == "file" and not stat.S_ISREG(found.st_mode):
        raise PathRefused(f"{what} {value!r}: not a regular file (a directory, FIFO or device)")
    if not os.access(real, os.R_OK | (os.X_OK if kind == "model directory" else 0)):
        raise PathRefused(f"{what} {value!r}: not readable by the service")
    return real


def check_tree(directory: Path, roots: list[Path], what: str) -> None:
    """Every entry under `directory` (a real path inside a root) must stay inside the roots: a symlinked
    `model.safetensors` or tokenizer that leads elsewhere is refused, and so is a symlink loop. A dangling link
    inside the roots is left alone (the worker leaves such entries out)."""
    seen = 0
    for parent, dirs, files in os.walk(directory):
        for name in [*dirs, *files]:
            seen += 1
            if seen > MAX_ENTRIES:
                raise PathRefused(f"{what} {str(directory)!r}: more than {MAX_ENTRIES} entries")
            entry = Path(parent) / name
            if not entry.is_symlink():
                continue
            shown = entry.relative_to(directory)
            target = real_path(str(entry))
            if target is None or not inside(target, roots):
                raise PathRefused(f"{what} {str(directory)!r}: {shown} links outside the allowed roots")
            try:
                stat_path(entry)
            except UnusablePath as exc:
                raise PathRefused(f"{what} {str(directory)!r}: {shown} {exc}") from None
