"""Where the example models, text and task files are: the folder `shared/data` beside a checkout (torch-free).

A checkout cloned from another local checkout (`git clone /path/to/twossp fresh`) has no `shared/data` beside it;
its origin has, so that folder is used then.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def _origin_folder(checkout: Path) -> Path | None:
    """The folder this checkout was cloned from, when its origin is a local path."""
    try:
        url = subprocess.run(["git", "-C", str(checkout), "config", "--get", "remote.origin.url"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    url = url.removeprefix("file://")
    if not url or "://" in url or (":" in url and not url.startswith("/")):  # a remote, not a folder
        return None
    folder = (checkout / url).resolve()
    return folder if folder.is_dir() else None


def example_data_dir(checkout: Path, variable: str) -> Path:
    """`variable`'s folder when it is set; else `shared/data` beside the checkout, or beside the local checkout it
    was cloned from when only that one has it (the first, when neither has)."""
    if os.environ.get(variable):
        return Path(os.environ[variable]).expanduser().resolve()
    beside = (checkout.parent / "shared" / "data").resolve()
    if beside.is_dir():
        return beside
    origin = _origin_folder(checkout)
    if origin is not None and (origin.parent / "shared" / "data").is_dir():
        return (origin.parent / "shared" / "data").resolve()
    return beside
