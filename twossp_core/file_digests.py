"""sha256 of files — the one function the artifact manifests, the API client's download check, a GGUF source's record
and the model card's source digest call — and a memo of them by what stat says of each file (the worker's artifact
cache holds one). Torch-free."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class FileDigests:
    """sha256 of files, remembered in `folder` (one small file per entry) by what stat says of the file: device,
    inode, size, modification and change times. A model's files are then read once per machine, not once per sweep
    cell (a 7B model is 14 GB to hash); a file written, replaced or touched has another entry. Entries are written
    atomically, so concurrent processes may share the folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, path: Path) -> str:
        st = path.stat()  # follows links: a pinned input's /proc/PID/fd link stats the file it holds open
        entry = self.folder / f"{st.st_dev}-{st.st_ino}-{st.st_size}-{st.st_mtime_ns}-{st.st_ctime_ns}"
        try:
            known = entry.read_text().strip()
        except OSError:
            known = ""
        if len(known) == 64:
            return known
        value = file_digest(path)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
        tmp.write_text(value)
        tmp.replace(entry)
        return value
