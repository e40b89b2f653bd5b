"""Writing an export atomically: into a private folder beside the target, moved in place once complete."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_into(out_dir: Path) -> Iterator[Path]:
    """A private folder beside `out_dir` to write an export into; on success its files get the mode of new files
    and move into `out_dir` (created if missing), replacing same-named entries. Always removed afterwards."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".twossp-save-", dir=out_dir.parent))
    try:
        yield tmp
        readable_like_new_files(tmp)
        for item in tmp.iterdir():
            target = out_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            item.replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def readable_like_new_files(directory: Path) -> None:
    """Give every file under `directory` the mode a new file gets (0644 under the usual umask): the weights are
    written through a private temporary file (0600), the other files are not."""
    probe = directory / ".twossp-mode-probe"
    probe.touch()
    mode = probe.stat().st_mode & 0o777
    probe.unlink()
    for item in directory.rglob("*"):
        if item.is_file():
            item.chmod(mode)
