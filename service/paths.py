"""Local paths a job may read: absolute, and (every symlink resolved) inside the allowed roots.

The API checks a request's paths before queueing; the worker opens the files and then checks what it opened
(worker/inputs.py), since they may have changed in between."""

from __future__ import annotations

import os
from pathlib import Path

ROOTS_RULE = "local paths must be absolute and inside TWOSSP_ALLOWED_LOCAL_ROOTS"
MAX_ENTRIES = 100_000  # a model directory with more entries than this is refused rather than walked forever


class PathRefused(ValueError):
    """A path outside the allowed roots, relative, or a directory holding a link that leads outside them."""


def inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def resolve_allowed(value: str, roots: list[Path], what: str) -> Path:
    """The real path of `value` (absolute, symlinks and `..` resolved) if it lies inside a root."""
    if not roots:
        raise PathRefused(f"{what} {value!r}: local paths are not accepted (TWOSSP_ALLOWED_LOCAL_ROOTS is empty)")
    if not value.startswith("/") or "\x00" in value:
        raise PathRefused(f"{what} {value!r}: {ROOTS_RULE}")
    real = Path(value).resolve()
    if not inside(real, roots):
        raise PathRefused(f"{what} {value!r}: {ROOTS_RULE}")
    return real


def check_tree(directory: Path, roots: list[Path], what: str) -> None:
    """Every entry under `directory` (a real path inside a root) must stay inside the roots: a symlinked
    `model.safetensors` or tokenizer that leads elsewhere is refused."""
    seen = 0
    for parent, dirs, files in os.walk(directory):
        for name in [*dirs, *files]:
            seen += 1
            if seen > MAX_ENTRIES:
                raise PathRefused(f"{what} {str(directory)!r}: more than {MAX_ENTRIES} entries")
            entry = Path(parent) / name
            if entry.is_symlink() and not inside(entry.resolve(), roots):
                raise PathRefused(
                    f"{what} {str(directory)!r}: {entry.relative_to(directory)} links outside the allowed roots"
                )
